namespace Onnx.Lora.Ir;

/// <summary>A use of a value: input <see cref="InputIndex"/> of <see cref="Node"/>.</summary>
public readonly record struct Usage(Node Node, int InputIndex);

/// <summary>
/// A named edge of the graph. It knows its producer (a node output, a graph input or an initializer) and every use.
/// NOTE: values compare by reference; two values with the same name in different graphs are different values.
/// </summary>
public sealed class Value
{
    private readonly List<Usage> _uses = [];

    /// <summary>Creates a value.</summary>
    public Value(string name, ValueType? type = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        Name = name;
        Type = type;
    }

    /// <summary>Name; unique within a graph and its subgraphs.</summary>
    public string Name { get; set; }

    /// <summary>Type and shape, when known.</summary>
    public ValueType? Type { get; set; }

    /// <summary>Element type, Undefined when unknown.</summary>
    public DataType ElementType => Type?.ElementType ?? DataType.Undefined;

    /// <summary>Shape, when known.</summary>
    public Shape? Shape => Type?.Shape;

    /// <summary>Documentation string from the model.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties of the value info, kept in order.</summary>
    public List<KeyValuePair<string, string>> MetadataProps { get; } = [];

    /// <summary>Node that produces this value, null for graph inputs and initializers.</summary>
    public Node? Producer { get; internal set; }

    /// <summary>Output index in <see cref="Producer"/>.</summary>
    public int ProducerOutputIndex { get; internal set; }

    /// <summary>Constant data when this value is an initializer.</summary>
    public Tensor? Initializer { get; internal set; }

    /// <summary>The graph that owns this value as input, initializer or node output; null while detached.</summary>
    public Graph? Graph { get; internal set; }

    /// <summary>Every node input that reads this value.</summary>
    public IReadOnlyList<Usage> Uses => _uses;

    /// <summary>True when the value is constant data (an initializer).</summary>
    public bool IsInitializer => Initializer is not null;

    /// <summary>True when the value is a graph input of its graph.</summary>
    public bool IsGraphInput => Graph is not null && Graph.Inputs.Contains(this);

    /// <summary>True when the value is a graph output of its graph.</summary>
    public bool IsGraphOutput => Graph is not null && Graph.Outputs.Contains(this);

    /// <summary>Unknown protobuf fields of the value info, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    internal void AddUse(Node node, int index) => _uses.Add(new Usage(node, index));

    internal void RemoveUse(Node node, int index) => _uses.Remove(new Usage(node, index));

    /// <summary>Makes every user of this value read <paramref name="replacement"/> instead.</summary>
    /// <param name="replacement">The value to read.</param>
    /// <param name="replaceGraphOutputs">Also replace this value where it is a graph output.</param>
    /// <exception cref="GraphValidationException">This value is a graph output and <paramref name="replaceGraphOutputs"/> is false.</exception>
    public void ReplaceAllUsesWith(Value replacement, bool replaceGraphOutputs = false)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        if (ReferenceEquals(replacement, this))
        {
            return;
        }

        if (IsGraphOutput && !replaceGraphOutputs)
        {
            throw new GraphValidationException($"Value '{Name}' is an output of graph '{Graph!.Name}'; pass replaceGraphOutputs: true to rewire it.");
        }

        foreach (Usage use in _uses.ToArray())
        {
            use.Node.ReplaceInput(use.InputIndex, replacement);
        }

        if (replaceGraphOutputs && Graph is not null)
        {
            for (int i = 0; i < Graph.Outputs.Count; i++)
            {
                if (ReferenceEquals(Graph.Outputs[i], this))
                {
                    Graph.Outputs[i] = replacement;
                }
            }
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"%{Name}";
}
