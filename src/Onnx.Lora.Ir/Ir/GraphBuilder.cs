namespace Onnx.Lora.Ir;

/// <summary>
/// Fluent construction of graphs: <c>var y = b.MatMul(x, b.Initializer(w));</c>. Node and value names are made
/// unique automatically. Used by the model builders, the rewriter and the trainer alike.
/// </summary>
public sealed class GraphBuilder
{
    private readonly HashSet<string> _names;
    private int _counter;

    /// <summary>Starts a new model with a main graph named <paramref name="graphName"/>.</summary>
    public GraphBuilder(string graphName, long opset = 17)
    {
        Model = new Model(new Graph(graphName)) { IrVersion = opset >= 21 ? 10 : 8, ProducerName = "onnx-lora" };
        Model.OpsetImports[string.Empty] = opset;
        Graph = Model.Graph;
        _names = new HashSet<string>(StringComparer.Ordinal);
    }

    /// <summary>Continues building inside an existing graph (e.g. to insert nodes into a loaded model).</summary>
    public GraphBuilder(Model model, Graph? graph = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Graph = graph ?? model.Graph;
        _names = Graph.UsedNames();
    }

    /// <summary>The model being built.</summary>
    public Model Model { get; }

    /// <summary>The graph nodes are added to.</summary>
    public Graph Graph { get; }

    /// <summary>When set, new nodes are inserted before this node instead of appended.</summary>
    public Node? InsertionPoint { get; set; }

    /// <summary>Prefix for generated node and value names.</summary>
    public string NamePrefix { get; set; } = string.Empty;

    /// <summary>A name not used yet in the graph, derived from <paramref name="hint"/>.</summary>
    public string FreshName(string hint)
    {
        string baseName = NamePrefix + hint;
        string name = baseName;
        while (!_names.Add(name))
        {
            name = $"{baseName}_{++_counter}";
        }

        return name;
    }

    /// <summary>Adds a graph input.</summary>
    public Value Input(string name, DataType type, params Dim[] shape)
    {
        var value = new Value(name, ValueType.Tensor(type, new Shape(shape)));
        _names.Add(name);
        Graph.Inputs.Add(value);
        return value;
    }

    /// <summary>Marks <paramref name="value"/> as a graph output, optionally renaming it and setting its type.</summary>
    public Value Output(Value value, string? name = null, DataType? type = null, params Dim[] shape)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (name is not null)
        {
            value.Name = name;
            _names.Add(name);
        }

        if (type is not null)
        {
            value.Type = ValueType.Tensor(type.Value, shape.Length == 0 && value.Shape is not null ? value.Shape : new Shape(shape));
        }

        Graph.Outputs.Add(value);
        return value;
    }

    /// <summary>Adds an initializer holding <paramref name="tensor"/> (renamed if its name is taken).</summary>
    public Value Initializer(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (!_names.Add(tensor.Name))
        {
            tensor.Name = FreshName(tensor.Name);
        }

        return Graph.AddInitializer(tensor);
    }

    /// <summary>A float32 initializer.</summary>
    public Value Floats(string name, long[] dims, ReadOnlySpan<float> values) => Initializer(InMemoryTensor.FromFloats(name, dims, values));

    /// <summary>A scalar float32 initializer.</summary>
    public Value Scalar(string name, float value) => Initializer(InMemoryTensor.Scalar(name, value));

    /// <summary>A 1-D int64 initializer.</summary>
    public Value Int64s(string name, params long[] values) => Initializer(InMemoryTensor.Int64Vector(name, values));

    /// <summary>Adds a node with one output and returns that output.</summary>
    public Value Op(string opType, Value?[] inputs, Attr[]? attributes = null, string domain = "", string? name = null) =>
        OpMulti(opType, inputs, 1, attributes, domain, name)[0];

    /// <summary>Adds a node with <paramref name="outputCount"/> outputs and returns them.</summary>
    public IReadOnlyList<Value> OpMulti(string opType, Value?[] inputs, int outputCount, Attr[]? attributes = null, string domain = "", string? name = null)
    {
        string nodeName = name is null ? FreshName(opType) : ClaimName(name);
        var outputNames = Enumerable.Range(0, outputCount).Select(i => FreshName(outputCount == 1 ? nodeName + "_output" : $"{nodeName}_output_{i}")).ToArray();
        var node = new Node(domain, opType, inputs, outputNames, attributes, nodeName);
        if (InsertionPoint is not null)
        {
            Graph.InsertBefore(InsertionPoint, node);
        }
        else
        {
            Graph.Add(node);
        }

        return node.Outputs;
    }

    /// <summary>Gives a value a type (element type and shape) as a shape fact for value_info.</summary>
    public static Value Typed(Value value, DataType type, params Dim[] shape)
    {
        ArgumentNullException.ThrowIfNull(value);
        value.Type = ValueType.Tensor(type, new Shape(shape));
        return value;
    }

    /// <summary>MatMul.</summary>
    public Value MatMul(Value a, Value b, string? name = null) => Op("MatMul", [a, b], name: name);

    /// <summary>Add.</summary>
    public Value Add(Value a, Value b, string? name = null) => Op("Add", [a, b], name: name);

    /// <summary>Sub.</summary>
    public Value Sub(Value a, Value b, string? name = null) => Op("Sub", [a, b], name: name);

    /// <summary>Mul.</summary>
    public Value Mul(Value a, Value b, string? name = null) => Op("Mul", [a, b], name: name);

    /// <summary>Div.</summary>
    public Value Div(Value a, Value b, string? name = null) => Op("Div", [a, b], name: name);

    /// <summary>Cast to <paramref name="to"/>.</summary>
    public Value Cast(Value x, DataType to, string? name = null) => Op("Cast", [x], [Attr.Int("to", (long)to)], name: name);

    /// <summary>Transpose with a permutation.</summary>
    public Value Transpose(Value x, long[] perm, string? name = null) => Op("Transpose", [x], [Attr.Ints("perm", perm)], name: name);

    /// <summary>Reshape to a constant shape.</summary>
    public Value Reshape(Value x, long[] shape, string? name = null) => Op("Reshape", [x, Int64s("shape", shape)], name: name);

    /// <summary>Identity.</summary>
    public Value Identity(Value x, string? name = null) => Op("Identity", [x], name: name);

    private string ClaimName(string name) => _names.Add(name) ? name : FreshName(name);
}

/// <summary>Conventions shared by the stages that rewrite and differentiate graphs.</summary>
public static class GraphConventions
{
    /// <summary>
    /// Metadata key on an Identity node whose output autodiff must treat as a constant (a stop-gradient, as
    /// torch's detach()). DoRA's weight norm uses it, as PEFT detaches that norm.
    /// </summary>
    public const string StopGradientKey = "onnx_lora.stop_gradient";

    /// <summary>True when <paramref name="node"/> is a stop-gradient Identity.</summary>
    public static bool IsStopGradient(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return node.Is("Identity") && node.MetadataProps.Any(p => p.Key == StopGradientKey && p.Value == "true");
    }

    /// <summary>Makes a stop-gradient Identity of <paramref name="x"/>.</summary>
    public static Value StopGradient(this GraphBuilder builder, Value x)
    {
        ArgumentNullException.ThrowIfNull(builder);
        Value y = builder.Identity(x, builder.FreshName("StopGradient"));
        y.Producer!.MetadataProps.Add(KeyValuePair.Create(StopGradientKey, "true"));
        return y;
    }
}
