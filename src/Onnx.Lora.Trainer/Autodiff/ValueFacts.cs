using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// Element types and (partly symbolic) shapes of graph values, taken from value_info where the model has it and
/// otherwise propagated through the ops by the shape and type rules of their <see cref="OpTable"/> entries. Unknown
/// stays unknown (null): the VJPs then fall back to run-time shape computations, which are always correct, only slower.
/// </summary>
internal sealed partial class ValueFacts
{
    private readonly OpTable _table;
    private readonly Dictionary<Value, DataType> _types = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<Value, Dim[]?> _shapes = new(ReferenceEqualityComparer.Instance);

    /// <summary>Creates empty facts whose rules come from <paramref name="table"/>.</summary>
    public ValueFacts(OpTable table) => _table = table;

    /// <summary>Element type of <paramref name="value"/>, Undefined when it cannot be told.</summary>
    public DataType TypeOf(Value value)
    {
        if (value.ElementType != DataType.Undefined)
        {
            return value.ElementType;
        }

        if (_types.TryGetValue(value, out DataType known))
        {
            return known;
        }

        _types[value] = DataType.Undefined; // guards against cycles through malformed graphs
        DataType t = InferType(value);
        _types[value] = t;
        return t;
    }

    /// <summary>True when the value carries floating-point data (so a gradient can flow through it).</summary>
    public bool IsFloat(Value value)
    {
        DataType t = TypeOf(value);
        return t == DataType.Undefined || t.IsFloatingPoint();
    }

    /// <summary>Rank of <paramref name="value"/>, null when unknown.</summary>
    public int? RankOf(Value value) => ShapeOf(value)?.Length;

    /// <summary>Dims of <paramref name="value"/> (fixed, symbolic or unknown per axis), null when even the rank is unknown.</summary>
    public Dim[]? ShapeOf(Value value)
    {
        if (value.Initializer is { } t)
        {
            return t.Dims.Select(d => new Dim(d)).ToArray();
        }

        if (value.Shape is { } s)
        {
            return [.. s];
        }

        if (_shapes.TryGetValue(value, out Dim[]? known))
        {
            return known;
        }

        _shapes[value] = null;
        Dim[]? inferred = InferShape(value);
        _shapes[value] = inferred;
        return inferred;
    }

    /// <summary>Records facts the autodiff learned (e.g. a gradient has the shape of its forward value).</summary>
    public void Record(Value value, DataType type, Dim[]? shape)
    {
        _types[value] = type;
        _shapes[value] = shape;
    }

    /// <summary>True when both dims are provably equal (same size, or the same symbol).</summary>
    public static bool SameDim(Dim a, Dim b) =>
        (a.Value.HasValue && a.Value == b.Value) || (a.Param is not null && a.Param == b.Param);

    /// <summary>Constant int64 data of a value (initializer or Constant node), null otherwise.</summary>
    public static long[]? ConstInts(Value? value)
    {
        if (value is null)
        {
            return null;
        }

        Tensor? t = value.Initializer;
        if (t is null && value.Producer is { } p && p.Is("Constant") && p.GetAttribute("value") is { } a && a.Type == AttrType.Tensor)
        {
            t = a.AsTensor();
        }

        if (t is null && value.Producer is { } p2 && p2.Is("Constant") && p2.GetAttribute("value_ints") is { } ai)
        {
            return [.. ai.AsInts()];
        }

        if (t is null && value.Producer is { } p3 && p3.Is("Constant") && p3.GetAttribute("value_int") is { } a1)
        {
            return [a1.AsInt()];
        }

        return t?.DataType switch
        {
            DataType.Int64 => t.ToArray<long>(),
            DataType.Int32 => t.ToArray<int>().Select(i => (long)i).ToArray(),
            _ => null,
        };
    }

    /// <summary>Element type of input <paramref name="i"/> of <paramref name="node"/>, Undefined when omitted or unknown.</summary>
    public DataType InputType(Node node, int i) => node.Inputs.Count > i && node.Inputs[i] is { } v ? TypeOf(v) : DataType.Undefined;

    /// <summary>Dims of input <paramref name="i"/> of <paramref name="node"/>, null when omitted or unknown.</summary>
    public Dim[]? InputShape(Node node, int i) => node.Inputs.Count > i && node.Inputs[i] is { } v ? ShapeOf(v) : null;

    /// <summary>
    /// The type of the first floating-point input, else of the first input. Ops that mix id and float inputs (fused
    /// embedding ops take the ids first) output floats; taking the ids' type would cut gradient paths silently.
    /// </summary>
    public DataType FirstFloatInputType(Node node)
    {
        DataType first = DataType.Undefined;
        bool seen = false;
        foreach (Value? input in node.Inputs)
        {
            if (input is null)
            {
                continue;
            }

            DataType t = TypeOf(input);
            if (t.IsFloatingPoint())
            {
                return t;
            }

            if (!seen)
            {
                first = t;
                seen = true;
            }
        }

        return first;
    }

    private DataType InferType(Value value)
    {
        if (value.Initializer is { } init)
        {
            return init.DataType;
        }

        if (value.Producer is not { } node)
        {
            return DataType.Undefined;
        }

        TypeRule rule = _table.Find(node.Domain, node.OpType)?.Type ?? Types.FirstFloatInput;
        return rule(this, node, value.ProducerOutputIndex);
    }

    private Dim[]? InferShape(Value value) =>
        value.Producer is { } node && _table.Find(node.Domain, node.OpType) is { } entry ? entry.Shape(this, node, value.ProducerOutputIndex) : null;
}
