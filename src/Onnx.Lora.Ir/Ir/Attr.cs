using System.Text;

namespace Onnx.Lora.Ir;

/// <summary>Attribute kinds, numbered as AttributeProto.AttributeType.</summary>
public enum AttrType
{
    /// <summary>Not set.</summary>
    Undefined = 0,
    /// <summary>One float.</summary>
    Float = 1,
    /// <summary>One int64.</summary>
    Int = 2,
    /// <summary>One byte string.</summary>
    String = 3,
    /// <summary>One tensor.</summary>
    Tensor = 4,
    /// <summary>One subgraph.</summary>
    Graph = 5,
    /// <summary>Floats.</summary>
    Floats = 6,
    /// <summary>Int64s.</summary>
    Ints = 7,
    /// <summary>Byte strings.</summary>
    Strings = 8,
    /// <summary>Tensors.</summary>
    Tensors = 9,
    /// <summary>Subgraphs.</summary>
    Graphs = 10,
    /// <summary>One sparse tensor (kept opaque).</summary>
    SparseTensor = 11,
    /// <summary>Sparse tensors (kept opaque).</summary>
    SparseTensors = 12,
    /// <summary>One type (kept opaque).</summary>
    TypeProto = 13,
    /// <summary>Types (kept opaque).</summary>
    TypeProtos = 14,
}

/// <summary>A node attribute. Values are immutable; replace the attribute to change it.</summary>
public sealed class Attr
{
    private Attr(string name, AttrType type, object? value)
    {
        Name = name;
        Type = type;
        Value = value;
    }

    /// <summary>Attribute name.</summary>
    public string Name { get; }

    /// <summary>Attribute kind.</summary>
    public AttrType Type { get; }

    /// <summary>
    /// The value: float, long, byte[] (string), Tensor, <see cref="Graph"/>, float[], long[],
    /// byte[][], Tensor[], Graph[], or ReadOnlyMemory&lt;byte&gt;[] for opaque kinds.
    /// </summary>
    public object? Value { get; }

    /// <summary>For attributes inside functions: the name of the function attribute this one refers to.</summary>
    public string? RefAttrName { get; set; }

    /// <summary>Documentation string.</summary>
    public string? DocString { get; set; }

    /// <summary>Unknown protobuf fields, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    /// <summary>An int attribute.</summary>
    public static Attr Int(string name, long value) => new(name, AttrType.Int, value);

    /// <summary>A float attribute.</summary>
    public static Attr Float(string name, float value) => new(name, AttrType.Float, value);

    /// <summary>A string attribute (UTF-8).</summary>
    public static Attr String(string name, string value) => new(name, AttrType.String, Encoding.UTF8.GetBytes(value));

    /// <summary>A string attribute from raw bytes.</summary>
    public static Attr Bytes(string name, byte[] value) => new(name, AttrType.String, value);

    /// <summary>An ints attribute.</summary>
    public static Attr Ints(string name, params long[] values) => new(name, AttrType.Ints, values);

    /// <summary>A floats attribute.</summary>
    public static Attr Floats(string name, params float[] values) => new(name, AttrType.Floats, values);

    /// <summary>A strings attribute.</summary>
    public static Attr Strings(string name, params string[] values) => new(name, AttrType.Strings, values.Select(Encoding.UTF8.GetBytes).ToArray());

    /// <summary>A strings attribute from raw bytes.</summary>
    public static Attr BytesList(string name, byte[][] values) => new(name, AttrType.Strings, values);

    /// <summary>A tensor attribute.</summary>
    public static Attr Tensor(string name, Tensor value) => new(name, AttrType.Tensor, value);

    /// <summary>A tensors attribute.</summary>
    public static Attr Tensors(string name, Tensor[] values) => new(name, AttrType.Tensors, values);

    /// <summary>A subgraph attribute.</summary>
    public static Attr Graph(string name, Graph value) => new(name, AttrType.Graph, value);

    /// <summary>A subgraphs attribute.</summary>
    public static Attr Graphs(string name, Graph[] values) => new(name, AttrType.Graphs, values);

    /// <summary>An attribute of a kind the IR keeps as serialized protobuf (sparse tensors, types).</summary>
    public static Attr Opaque(string name, AttrType type, ReadOnlyMemory<byte>[] values) => new(name, type, values);

    /// <summary>An attribute with no value (only a reference or a type).</summary>
    public static Attr Empty(string name, AttrType type) => new(name, type, null);

    /// <summary>The int value.</summary>
    public long AsInt() => Value is long v ? v : throw Mismatch(AttrType.Int);

    /// <summary>The float value.</summary>
    public float AsFloat() => Value is float v ? v : throw Mismatch(AttrType.Float);

    /// <summary>The string value decoded as UTF-8.</summary>
    public string AsString() => Value is byte[] v ? Encoding.UTF8.GetString(v) : throw Mismatch(AttrType.String);

    /// <summary>The ints value.</summary>
    public IReadOnlyList<long> AsInts() => Value as long[] ?? throw Mismatch(AttrType.Ints);

    /// <summary>The floats value.</summary>
    public IReadOnlyList<float> AsFloats() => Value as float[] ?? throw Mismatch(AttrType.Floats);

    /// <summary>The strings value decoded as UTF-8.</summary>
    public IReadOnlyList<string> AsStrings() => Value is byte[][] v ? v.Select(Encoding.UTF8.GetString).ToArray() : throw Mismatch(AttrType.Strings);

    /// <summary>The tensor value.</summary>
    public Tensor AsTensor() => Value as Tensor ?? throw Mismatch(AttrType.Tensor);

    /// <summary>The subgraph value.</summary>
    public Graph AsGraph() => Value as Graph ?? throw Mismatch(AttrType.Graph);

    /// <summary>Every subgraph this attribute holds.</summary>
    public IEnumerable<Graph> Subgraphs() => Value switch
    {
        Graph g => [g],
        Graph[] gs => gs,
        _ => [],
    };

    private GraphValidationException Mismatch(AttrType expected) =>
        new($"Attribute '{Name}' is {Type}; expected {expected}.");

    /// <inheritdoc />
    public override string ToString() => Value switch
    {
        byte[] b => $"{Name}=\"{Encoding.UTF8.GetString(b)}\"",
        long[] l => $"{Name}=[{string.Join(",", l)}]",
        float[] f => $"{Name}=[{string.Join(",", f)}]",
        _ => $"{Name}={Value}",
    };
}
