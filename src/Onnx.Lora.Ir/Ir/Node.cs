namespace Onnx.Lora.Ir;

/// <summary>
/// An operator application. Inputs are values (null for an omitted optional input); outputs are values this
/// node produces (an omitted optional output is a value with an empty name).
/// </summary>
public sealed class Node
{
    private readonly List<Value?> _inputs = [];
    private readonly List<Value> _outputs = [];

    /// <summary>Creates a node; its outputs are new values named <paramref name="outputNames"/>.</summary>
    /// <param name="domain">Operator domain ("" or "ai.onnx" for standard ops, "com.microsoft" for contrib ops).</param>
    /// <param name="opType">Operator type.</param>
    /// <param name="inputs">Input values, null for an omitted optional input.</param>
    /// <param name="outputNames">Names of the output values ("" for an omitted optional output).</param>
    /// <param name="attributes">Attributes.</param>
    /// <param name="name">Node name.</param>
    public Node(string domain, string opType, IEnumerable<Value?> inputs, IEnumerable<string> outputNames, IEnumerable<Attr>? attributes = null, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(opType);
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(outputNames);
        Domain = domain ?? string.Empty;
        OpType = opType;
        Name = name ?? string.Empty;
        foreach (Value? input in inputs)
        {
            AppendInput(input);
        }

        foreach (string outputName in outputNames)
        {
            var output = new Value(outputName) { Producer = this, ProducerOutputIndex = _outputs.Count };
            _outputs.Add(output);
        }

        if (attributes is not null)
        {
            foreach (Attr attr in attributes)
            {
                Attributes[attr.Name] = attr;
            }
        }
    }

    /// <summary>Node name (may be empty).</summary>
    public string Name { get; set; }

    /// <summary>Operator type.</summary>
    public string OpType { get; set; }

    /// <summary>Operator domain; "" is the default ONNX domain.</summary>
    public string Domain { get; set; }

    /// <summary>Function overload identifier.</summary>
    public string? Overload { get; set; }

    /// <summary>Documentation string.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties, kept in order.</summary>
    public List<KeyValuePair<string, string>> MetadataProps { get; } = [];

    /// <summary>Unknown protobuf fields, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    /// <summary>Attributes in model order.</summary>
    public OrderedDictionary<string, Attr> Attributes { get; } = new(StringComparer.Ordinal);

    /// <summary>Input values; null marks an omitted optional input.</summary>
    public IReadOnlyList<Value?> Inputs => _inputs;

    /// <summary>Output values.</summary>
    public IReadOnlyList<Value> Outputs => _outputs;

    /// <summary>The graph this node belongs to; null while detached.</summary>
    public Graph? Graph { get; internal set; }

    /// <summary>True for ops of the default ONNX domain.</summary>
    public bool IsStandardDomain => Domain.Length == 0 || Domain == "ai.onnx";

    /// <summary>True when this node has <paramref name="opType"/> in <paramref name="domain"/> (default: the ONNX domain).</summary>
    public bool Is(string opType, string domain = "") =>
        OpType == opType && (domain.Length == 0 ? IsStandardDomain : Domain == domain);

    /// <summary>The attribute named <paramref name="name"/>, or null.</summary>
    public Attr? GetAttribute(string name) => Attributes.GetValueOrDefault(name);

    /// <summary>The int attribute <paramref name="name"/>, or <paramref name="defaultValue"/> when absent.</summary>
    public long GetInt(string name, long defaultValue) => GetAttribute(name)?.AsInt() ?? defaultValue;

    /// <summary>The float attribute <paramref name="name"/>, or <paramref name="defaultValue"/> when absent.</summary>
    public float GetFloat(string name, float defaultValue) => GetAttribute(name)?.AsFloat() ?? defaultValue;

    /// <summary>Sets (adds or replaces) an attribute.</summary>
    public void SetAttribute(Attr attr)
    {
        ArgumentNullException.ThrowIfNull(attr);
        Attributes[attr.Name] = attr;
    }

    /// <summary>Replaces input <paramref name="index"/> and keeps the use lists of both values right.</summary>
    public void ReplaceInput(int index, Value? value)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, _inputs.Count);
        _inputs[index]?.RemoveUse(this, index);
        _inputs[index] = value;
        value?.AddUse(this, index);
    }

    /// <summary>Appends an input.</summary>
    public void AppendInput(Value? value)
    {
        _inputs.Add(value);
        value?.AddUse(this, _inputs.Count - 1);
    }

    /// <summary>Drops all inputs, detaching this node from the values it read.</summary>
    internal void ClearInputs()
    {
        for (int i = 0; i < _inputs.Count; i++)
        {
            _inputs[i]?.RemoveUse(this, i);
        }

        _inputs.Clear();
    }

    /// <summary>Outer-scope values read by nodes of this node's subgraphs (the implicit inputs of If/Loop/Scan).</summary>
    public IEnumerable<Value> ImplicitInputs()
    {
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (Attr attr in Attributes.Values)
        {
            foreach (Graph sub in attr.Subgraphs())
            {
                foreach (Value v in sub.OuterScopeReads())
                {
                    if (seen.Add(v))
                    {
                        yield return v;
                    }
                }
            }
        }
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"{(Name.Length > 0 ? Name + ": " : "")}{(Domain.Length > 0 ? Domain + "::" : "")}{OpType}({string.Join(", ", _inputs.Select(i => i?.Name ?? ""))}) -> ({string.Join(", ", _outputs.Select(o => o.Name))})";
}
