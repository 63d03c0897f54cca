using Onnx.Lora.Ir;

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
        "SkipSimplifiedLayerNormalization", "SkipLayerNormalization", "Not", "IsNaN", "IsInf",
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
            case "EmbedLayerNormalization":
                // (input_ids, segment_ids, word_embedding, ...) → (output, mask_index int32, embedding_sum).
                return index == 1 ? DataType.Int32 : In(node, 2);
            default:
                return DefaultType(node);
        }
    }

    /// <summary>
    /// The type of the first floating-point input, else of the first input. Ops that mix id and float inputs (fused
    /// embedding ops take the ids first) output floats; taking the ids' type would cut gradient paths silently.
    /// </summary>
    private DataType DefaultType(Node node)
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
                if (a is null || b is null || a.Length < 2 || b.Length < 2 || node.GetInt("transBatchA", 0) != 0 || node.GetInt("transBatchB", 0) != 0)
                {
                    return null;
                }

                Dim rows = node.GetInt("transA", 0) != 0 ? a[^1] : a[^2];
                Dim cols = node.GetInt("transB", 0) != 0 ? b[^2] : b[^1];
                Dim[]? batch = Broadcast([a[..^2], b[..^2]]);
                return batch is null ? null : [.. batch, rows, cols];
            }

            case "GroupQueryAttention":
            {
                // Output [batch, seq, heads · head size]; a packed query holds heads + 2 · kv heads of that size.
                Dim[]? q = In(node, 0, true);
                long heads = node.GetInt("num_heads", 0);
                long kvHeads = node.GetInt("kv_num_heads", 0);
                bool packed = node.Inputs.Count < 2 || node.Inputs[1] is null;
                long parts = packed ? heads + (2 * kvHeads) : heads;
                return q is not { Length: 3 } || q[2].Value is not { } width || parts <= 0 || width % parts != 0 ? null
                    : [q[0], q[1], new Dim(heads * (width / parts))];
            }

            case "MultiHeadAttention":
            {
                // Output [batch, seq, v hidden] when the value comes as [batch, kv seq, v hidden].
                Dim[]? q = In(node, 0, true);
                Dim[]? v = In(node, 2, true);
                return q is not { Length: 3 } || v is not { Length: 3 } ? null : [q[0], q[1], v[2]];
            }

            case "Gemm":
            {
                Dim[]? a = In(node, 0, true);
                Dim[]? b = In(node, 1, true);
                return a is not { Length: 2 } || b is not { Length: 2 } ? null
                    : [node.GetInt("transA", 0) != 0 ? a[1] : a[0], node.GetInt("transB", 0) != 0 ? b[0] : b[1]];
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
                Dim[]? target = SymbolicInts(node.Inputs[1]);
                Dim[]? x = In(node, 0, true);
                if (target is null)
                {
                    return StaticLength(node.Inputs[1]) is { } length ? new Dim[length] : null;
                }

                var dims = new Dim[target.Length];
                int inferred = -1;
                for (int i = 0; i < target.Length; i++)
                {
                    dims[i] = target[i].Value switch
                    {
                        0 when x is not null && i < x.Length && node.GetInt("allowzero", 0) == 0 => x[i],
                        > 0 => target[i],
                        null => target[i],
                        _ => default,
                    };
                    inferred = target[i].Value == -1 ? i : inferred;
                }

                if (inferred >= 0 && x is not null)
                {
                    dims[inferred] = Quotient(x, dims.Where((_, i) => i != inferred).ToArray());
                }

                return dims;
            }

            case "Split":
            {
                Dim[]? x = In(node, 0, true);
                if (x is null)
                {
                    return null;
                }

                int axis = (int)node.GetInt("axis", 0);
                axis = axis < 0 ? axis + x.Length : axis;
                long[]? sizes = node.GetAttribute("split")?.AsInts().ToArray() ?? (node.Inputs.Count > 1 ? ConstInts(node.Inputs[1]) : null);
                Dim[] result = [.. x];
                int index = value.ProducerOutputIndex;
                if (sizes is not null && index < sizes.Length)
                {
                    result[axis] = new Dim(sizes[index]);
                }
                else if (sizes is null && x[axis].Value is { } total && total % node.Outputs.Count == 0)
                {
                    result[axis] = new Dim(total / node.Outputs.Count);
                }
                else
                {
                    result[axis] = default;
                }

                return result;
            }

            case "Squeeze":
            {
                Dim[]? x = In(node, 0, true);
                long[]? axes = node.GetAttribute("axes")?.AsInts().ToArray() ?? (node.Inputs.Count > 1 ? ConstInts(node.Inputs[1]) : null);
                if (x is null || axes is null)
                {
                    return null;
                }

                var set = axes.Select(a => (int)(a < 0 ? a + x.Length : a)).ToHashSet();
                return x.Where((_, i) => !set.Contains(i)).ToArray();
            }

            case "SoftmaxCrossEntropyLoss":
                return node.GetAttribute("reduction")?.AsString() == "none" ? In(node, 1, true) : [];

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
                if (x is not null && ConstInts(node.Inputs[1]) is { } target)
                {
                    // Expand broadcasts both ways: a 1 in the target keeps the input's dim.
                    return Broadcast([x, target.Select(t => new Dim(t)).ToArray()]);
                }

                int? length = StaticLength(node.Inputs[1]);
                return x is null || length is null ? null : new Dim[Math.Max(x.Length, length.Value)];
            }

            case "Concat":
            {
                var parts = node.Inputs.Select(i => i is null ? null : ShapeOf(i)).ToList();
                if (parts.Count == 0 || parts.Any(p => p is null) || parts.Any(p => p!.Length != parts[0]!.Length))
                {
                    return null;
                }

                int rank = parts[0]!.Length;
                int axis = (int)node.GetInt("axis", 0);
                axis = axis < 0 ? axis + rank : axis;
                var dims = new Dim[rank];
                for (int i = 0; i < rank; i++)
                {
                    if (i == axis)
                    {
                        dims[i] = parts.All(p => p![i].IsFixed) ? new Dim(parts.Sum(p => p![i].Value!.Value)) : default;
                    }
                    else
                    {
                        // Every input has the same dim there; a known one among them tells it.
                        dims[i] = parts.Select(p => p![i]).FirstOrDefault(d => d.IsFixed || d.Param is not null);
                    }
                }

                return dims;
            }

            case "Slice":
            {
                Dim[]? x = In(node, 0, true);
                if (x is null)
                {
                    return null;
                }

                long[]? starts = ConstInts(node.Inputs.ElementAtOrDefault(1));
                Dim[]? endDims = SymbolicInts(node.Inputs.ElementAtOrDefault(2));
                long[]? ends = endDims?.Select(d => d.Value ?? long.MinValue).ToArray();
                long[]? axes = node.Inputs.Count > 3 && node.Inputs[3] is not null ? ConstInts(node.Inputs[3]) : starts is null ? null : Enumerable.Range(0, starts.Length).Select(i => (long)i).ToArray();
                long[]? steps = node.Inputs.Count > 4 && node.Inputs[4] is not null ? ConstInts(node.Inputs[4]) : starts?.Select(_ => 1L).ToArray();
                if (starts is null || ends is null || axes is null || steps is null)
                {
                    return new Dim[x.Length];
                }

                Dim[] dims = [.. x];
                for (int k = 0; k < axes.Length; k++)
                {
                    int axis = (int)(axes[k] < 0 ? axes[k] + x.Length : axes[k]);
                    // A symbolic end read from another value's shape: slicing [0, n) gives n in any run that
                    // succeeds (a shorter result would fail to broadcast against the values it meets).
                    dims[axis] = ends[k] == long.MinValue
                        ? (starts[k] == 0 && steps[k] == 1 && endDims![k].Param is not null ? endDims[k] : default)
                        : SliceLength(x[axis], starts[k], ends[k], steps[k]);
                }

                return dims;
            }

            case "Shape" when node.GetAttribute("start") is null && node.GetAttribute("end") is null:
                return RankOf(node.Inputs[0]!) is { } r ? [new Dim(r)] : [default];

            case "Size":
                return [];

            case "ConstantOfShape":
                return SymbolicInts(node.Inputs[0]) is { } filled ? filled : StaticLength(node.Inputs[0]) is { } n ? new Dim[n] : null;

            case "Range":
            {
                // Range(0, n, 1) is [n]; n is often a dim read with Shape and Gather (position ids, rotary tables).
                long[]? start = ConstInts(node.Inputs[0]);
                long[]? delta = ConstInts(node.Inputs[2]);
                return start is [0] && delta is [1] ? [ScalarDim(node.Inputs[1])] : [default];
            }

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

    /// <summary>
    /// Contents of a 1-D int64 shape tensor as dims, where each element is a constant or a dim of some value:
    /// constants, Shape(x), Concat of such, Unsqueeze of scalar dims. Null when an element cannot be told.
    /// </summary>
    private Dim[]? SymbolicInts(Value? v)
    {
        if (v is null)
        {
            return null;
        }

        if (ConstInts(v) is { } c)
        {
            return c.Select(x => new Dim(x)).ToArray();
        }

        Node? n = v.Producer;
        switch (n?.OpType)
        {
            case "Shape" when n.GetAttribute("start") is null && n.GetAttribute("end") is null:
                return ShapeOf(n.Inputs[0]!) is { } dims && dims.All(d => d.IsFixed || d.Param is not null) ? dims : null;
            case "Cast" or "Identity":
                return SymbolicInts(n.Inputs[0]);
            case "Unsqueeze" when RankOf(n.Inputs[0]!) == 0:
                return ScalarDim(n.Inputs[0]) is { } d && (d.IsFixed || d.Param is not null) ? [d] : null;
            case "Concat":
            {
                var parts = new List<Dim>();
                foreach (Value? input in n.Inputs)
                {
                    if (SymbolicInts(input) is not { } part)
                    {
                        return null;
                    }

                    parts.AddRange(part);
                }

                return [.. parts];
            }

            default:
                return null;
        }
    }

    /// <summary>The dim a scalar int64 value holds: a constant, or Gather(Shape(x), k) = dim k of x; unknown otherwise.</summary>
    private Dim ScalarDim(Value? v)
    {
        if (ConstInts(v) is [long c])
        {
            return new Dim(c);
        }

        Node? n = v?.Producer;
        if (n is null)
        {
            return default;
        }

        if (n.OpType is "Cast" or "Identity" or "Squeeze" or "Reshape")
        {
            return ScalarDim(n.Inputs[0]);
        }

        if (n.OpType == "Gather" && n.Inputs[0]?.Producer is { OpType: "Shape" } shape && shape.GetAttribute("start") is null
            && ConstInts(n.Inputs[1]) is [long k] && ShapeOf(shape.Inputs[0]!) is { } dims)
        {
            int axis = (int)(k < 0 ? k + dims.Length : k);
            return axis >= 0 && axis < dims.Length ? dims[axis] : default;
        }

        return default;
    }

    /// <summary>Length of a constant slice of an axis; unknown unless the axis size is fixed (or the slice is whole).</summary>
    private static Dim SliceLength(Dim size, long start, long end, long step)
    {
        if (step == 1 && start == 0 && end >= int.MaxValue)
        {
            return size;
        }

        if (size.Value is not { } n || step == 0)
        {
            return default;
        }

        static long Clamp(long v, long n, long lo, long hi) => Math.Clamp(v < 0 ? v + n : v, lo, hi);
        long s = step > 0 ? Clamp(start, n, 0, n) : Clamp(start, n, -1, n - 1);
        long e = step > 0 ? Clamp(end, n, 0, n) : Clamp(end, n, -1, n - 1);
        long count = step > 0 ? (e - s + step - 1) / step : (s - e - step - 1) / -step;
        return new Dim(Math.Max(count, 0));
    }

    /// <summary>
    /// The dim a Reshape's -1 stands for: the input's element count divided by the other target dims, when the symbols
    /// cancel (e.g. [batch, seq, 64] to [batch, seq, 8, -1] gives 8); unknown otherwise.
    /// </summary>
    private static Dim Quotient(Dim[] input, Dim[] others)
    {
        if (input.Any(d => !d.IsFixed && d.Param is null) || others.Any(d => !d.IsFixed && d.Param is null))
        {
            return default;
        }

        var symbols = input.Where(d => d.Param is not null).Select(d => d.Param!).ToList();
        foreach (Dim d in others.Where(d => d.Param is not null))
        {
            if (!symbols.Remove(d.Param!))
            {
                return default;
            }
        }

        long numerator = input.Where(d => d.IsFixed).Aggregate(1L, (a, d) => a * d.Value!.Value);
        long denominator = others.Where(d => d.IsFixed).Aggregate(1L, (a, d) => a * d.Value!.Value);
        if (denominator == 0 || numerator % denominator != 0)
        {
            return default;
        }

        long q = numerator / denominator;
        return symbols.Count switch
        {
            0 => new Dim(q),
            1 when q == 1 => new Dim(symbols[0]),
            _ => default,
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
