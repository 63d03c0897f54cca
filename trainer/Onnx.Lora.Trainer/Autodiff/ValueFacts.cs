using Onnx.Lora.Graph;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// Element types and (partly symbolic) shapes of graph values, taken from value_info where the model has it and
/// otherwise propagated through the ops the gradient rules care about. Unknown stays unknown (null): the rules
/// then fall back to run-time shape computations, which are always correct, only slower.
/// </summary>
internal sealed class ValueFacts
{
    private static readonly HashSet<string> s_boolOps = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"];
    private static readonly HashSet<string> s_int64Ops = ["Shape", "Size", "NonZero", "ArgMax", "ArgMin"];
    private static readonly HashSet<string> s_sameShapeOps =
    [
        "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Tanh", "Erf", "Sigmoid", "Relu", "Softmax", "LogSoftmax", "Cast", "Identity",
        "Dropout", "LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "Gelu", "FastGelu", "RotaryEmbedding",
        "Abs", "Sin", "Cos", "CastLike", "Floor", "Ceil", "Round", "Sign", "Clip", "LeakyRelu", "Softplus", "HardSigmoid", "QuickGelu",
        "SkipSimplifiedLayerNormalization", "SkipLayerNormalization",
    ];

    private static readonly HashSet<string> s_broadcastOps = ["Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Less", "Greater", "And", "Or"];

    private readonly Dictionary<Value, DataType> _types = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<Value, Dim[]?> _shapes = new(ReferenceEqualityComparer.Instance);

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

    private DataType InferType(Value value)
    {
        if (value.Initializer is { } init)
        {
            return init.DataType;
        }

        Node? node = value.Producer;
        if (node is null)
        {
            return DataType.Undefined;
        }

        int index = value.ProducerOutputIndex;
        string op = node.OpType;
        if (s_boolOps.Contains(op) || (op == "Dropout" && index == 1))
        {
            return DataType.Bool;
        }

        if (s_int64Ops.Contains(op) || (op == "TopK" && index == 1))
        {
            return DataType.Int64;
        }

        switch (op)
        {
            case "Cast":
                return (DataType)node.GetInt("to", 0);
            case "CastLike":
                return In(node, 1);
            case "Where":
                return In(node, 1);
            case "ConstantOfShape":
                return node.GetAttribute("value")?.AsTensor().DataType ?? DataType.Float;
            case "Constant":
                return node.GetAttribute("value")?.AsTensor().DataType
                    ?? (node.GetAttribute("value_float") is not null || node.GetAttribute("value_floats") is not null ? DataType.Float : DataType.Int64);
            case "DequantizeLinear":
                return In(node, 1);
            case "OneHot":
                return In(node, 2);
            case "LayerNormalization" when index > 0:
            case "SimplifiedLayerNormalization" when index > 0:
                return DataType.Float;
            default:
                return node.Inputs.FirstOrDefault(i => i is not null) is { } first ? TypeOf(first) : DataType.Undefined;
        }
    }

    private DataType In(Node node, int i) => node.Inputs.Count > i && node.Inputs[i] is { } v ? TypeOf(v) : DataType.Undefined;

    private Dim[]? In(Node node, int i, bool shape) => node.Inputs.Count > i && node.Inputs[i] is { } v ? ShapeOf(v) : null;

    private Dim[]? InferShape(Value value)
    {
        Node? node = value.Producer;
        if (node is null)
        {
            return null;
        }

        string op = node.OpType;
        if (value.ProducerOutputIndex > 0 && op is not ("Split" or "SkipSimplifiedLayerNormalization" or "SkipLayerNormalization"))
        {
            return null;
        }

        if (s_sameShapeOps.Contains(op))
        {
            return In(node, 0, true);
        }

        if (s_broadcastOps.Contains(op))
        {
            return Broadcast(node.Inputs.Where(i => i is not null).Select(i => ShapeOf(i!)).ToList());
        }

        switch (op)
        {
            case "MatMul":
            case "FusedMatMul":
            {
                Dim[]? a = In(node, 0, true);
                Dim[]? b = In(node, 1, true);
                if (a is null || b is null || a.Length < 2 || b.Length < 2 || node.GetInt("transA", 0) != 0 || node.GetInt("transB", 0) != 0)
                {
                    return null;
                }

                Dim[]? batch = Broadcast([a[..^2], b[..^2]]);
                return batch is null ? null : [.. batch, a[^2], b[^1]];
            }

            case "Transpose":
            {
                Dim[]? x = In(node, 0, true);
                if (x is null)
                {
                    return node.GetAttribute("perm") is { } p ? new Dim[p.AsInts().Count] : null;
                }

                long[] perm = node.GetAttribute("perm")?.AsInts().ToArray() ?? Enumerable.Range(0, x.Length).Reverse().Select(i => (long)i).ToArray();
                return perm.Select(p => x[p]).ToArray();
            }

            case "Reshape":
            {
                long[]? target = ConstInts(node.Inputs[1]);
                Dim[]? x = In(node, 0, true);
                if (target is null)
                {
                    return StaticLength(node.Inputs[1]) is { } length ? new Dim[length] : null;
                }

                var dims = new Dim[target.Length];
                for (int i = 0; i < target.Length; i++)
                {
                    dims[i] = target[i] switch
                    {
                        0 when x is not null && i < x.Length => x[i],
                        > 0 => new Dim(target[i]),
                        _ => default,
                    };
                }

                return dims;
            }

            case "Unsqueeze":
            {
                Dim[]? x = In(node, 0, true);
                long[]? axes = node.GetAttribute("axes")?.AsInts().ToArray() ?? ConstInts(node.Inputs.Count > 1 ? node.Inputs[1] : null);
                if (x is null || axes is null)
                {
                    return null;
                }

                int rank = x.Length + axes.Length;
                var norm = axes.Select(a => a < 0 ? a + rank : a).ToHashSet();
                var dims = new List<Dim>();
                int k = 0;
                for (int i = 0; i < rank; i++)
                {
                    dims.Add(norm.Contains(i) ? new Dim(1) : x[k++]);
                }

                return [.. dims];
            }

            case "Gather":
            {
                Dim[]? data = In(node, 0, true);
                Dim[]? idx = In(node, 1, true);
                if (data is null || idx is null)
                {
                    return null;
                }

                int axis = (int)node.GetInt("axis", 0);
                axis = axis < 0 ? axis + data.Length : axis;
                return [.. data[..axis], .. idx, .. data[(axis + 1)..]];
            }

            case "ReduceSum":
            case "ReduceMean":
            case "ReduceMax":
            {
                Dim[]? x = In(node, 0, true);
                long[]? axes = node.GetAttribute("axes")?.AsInts().ToArray() ?? (node.Inputs.Count > 1 ? ConstInts(node.Inputs[1]) : []);
                if (x is null || axes is null)
                {
                    return null;
                }

                bool keep = node.GetInt("keepdims", 1) != 0;
                var set = axes.Length == 0 ? Enumerable.Range(0, x.Length).ToHashSet() : axes.Select(a => (int)(a < 0 ? a + x.Length : a)).ToHashSet();
                return x.Select((d, i) => set.Contains(i) ? (keep ? new Dim(1) : (Dim?)null) : d).Where(d => d is not null).Select(d => d!.Value).ToArray();
            }

            case "Expand":
            {
                Dim[]? x = In(node, 0, true);
                int? length = StaticLength(node.Inputs[1]);
                return x is null || length is null ? null : new Dim[Math.Max(x.Length, length.Value)];
            }

            case "Concat":
            case "Slice":
                return In(node, 0, true) is { } first ? new Dim[first.Length] : null;

            case "MatMulNBits":
            {
                Dim[]? a = In(node, 0, true);
                return a is null ? null : [.. a[..^1], new Dim(node.GetInt("N", 0))];
            }

            default:
                return null;
        }
    }

    /// <summary>Length of a 1-D int64 shape tensor when it can be told statically (constants, Shape, Concat, Unsqueeze of scalars).</summary>
    private int? StaticLength(Value? v)
    {
        if (v is null)
        {
            return null;
        }

        if (ConstInts(v) is { } c)
        {
            return c.Length;
        }

        Node? n = v.Producer;
        return n?.OpType switch
        {
            "Shape" when n.GetAttribute("start") is null && n.GetAttribute("end") is null => RankOf(n.Inputs[0]!),
            "Concat" => n.Inputs.Aggregate((int?)0, (acc, i) => acc is null || i is null ? null : acc + StaticLength(i)),
            "Unsqueeze" when RankOf(n.Inputs[0]!) == 0 => 1,
            "Cast" or "Identity" => StaticLength(n.Inputs[0]),
            _ => RankOf(v) == 1 && ShapeOf(v)![0].Value is { } len ? (int)len : null,
        };
    }

    /// <summary>Numpy-style broadcast of shapes; an axis becomes unknown where the sizes cannot be decided.</summary>
    private static Dim[]? Broadcast(List<Dim[]?> shapes)
    {
        if (shapes.Count == 0 || shapes.Any(s => s is null))
        {
            return null;
        }

        int rank = shapes.Max(s => s!.Length);
        var result = new Dim[rank];
        for (int axis = 0; axis < rank; axis++)
        {
            Dim? chosen = null;
            bool unknown = false;
            foreach (Dim[]? s in shapes)
            {
                int i = axis - (rank - s!.Length);
                if (i < 0)
                {
                    continue;
                }

                Dim d = s[i];
                if (d.Value == 1)
                {
                    continue;
                }

                if (chosen is null)
                {
                    chosen = d;
                }
                else if (!SameDim(chosen.Value, d))
                {
                    unknown = true;
                }
            }

            result[axis] = unknown ? default : chosen ?? new Dim(1);
        }

        return result;
    }
}
