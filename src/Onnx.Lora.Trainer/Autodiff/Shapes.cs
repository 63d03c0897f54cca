using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// Shape rules of the <see cref="OpTable"/> entries: the dims of an op's output from its inputs' dims, attributes and
/// constant inputs. Each returns null (unknown) where the facts do not decide it, and describes output 0 only unless
/// it says otherwise.
/// </summary>
internal static class Shapes
{
    /// <summary>The explicit marker of an op whose output shape is not inferred.</summary>
    public static readonly ShapeRule Unknown = static (_, _, _) => null;

    /// <summary>Output 0 has the shape of input 0 (elementwise unary ops, normalizations, casts).</summary>
    public static readonly ShapeRule SameAsInput = static (f, n, o) => o == 0 ? f.InputShape(n, 0) : null;

    /// <summary>Numpy broadcast of all inputs.</summary>
    public static readonly ShapeRule Broadcast = static (f, n, o) =>
        o == 0 ? ValueFacts.Broadcast(n.Inputs.Where(i => i is not null).Select(i => f.ShapeOf(i!)).ToList()) : null;

    /// <summary>A scalar (Size).</summary>
    public static readonly ShapeRule Scalar = static (_, _, o) => o == 0 ? [] : null;

    /// <summary>MatMul and com.microsoft FusedMatMul (transA / transB, no batch transposes).</summary>
    public static Dim[]? MatMul(ValueFacts f, Node n, int o)
    {
        Dim[]? a = f.InputShape(n, 0);
        Dim[]? b = f.InputShape(n, 1);
        if (o != 0 || a is null || b is null || a.Length < 2 || b.Length < 2 || n.GetInt("transBatchA", 0) != 0 || n.GetInt("transBatchB", 0) != 0)
        {
            return null;
        }

        Dim rows = n.GetInt("transA", 0) != 0 ? a[^1] : a[^2];
        Dim cols = n.GetInt("transB", 0) != 0 ? b[^2] : b[^1];
        Dim[]? batch = ValueFacts.Broadcast([a[..^2], b[..^2]]);
        return batch is null ? null : [.. batch, rows, cols];
    }

    /// <summary>Gemm: [op(A) rows, op(B) cols].</summary>
    public static Dim[]? Gemm(ValueFacts f, Node n, int o)
    {
        Dim[]? a = f.InputShape(n, 0);
        Dim[]? b = f.InputShape(n, 1);
        return o != 0 || a is not { Length: 2 } || b is not { Length: 2 } ? null
            : [n.GetInt("transA", 0) != 0 ? a[1] : a[0], n.GetInt("transB", 0) != 0 ? b[0] : b[1]];
    }

    /// <summary>com.microsoft MatMulNBits: [A's leading dims, N].</summary>
    public static Dim[]? MatMulNBits(ValueFacts f, Node n, int o) =>
        o == 0 && f.InputShape(n, 0) is { } a ? [.. a[..^1], new Dim(n.GetInt("N", 0))] : null;

    /// <summary>
    /// com.microsoft GroupQueryAttention output 0: [batch, seq, heads · head size]; a packed query holds heads + 2 · kv
    /// heads of that size.
    /// </summary>
    public static Dim[]? GroupQueryAttention(ValueFacts f, Node n, int o)
    {
        Dim[]? q = f.InputShape(n, 0);
        long heads = n.GetInt("num_heads", 0);
        long kvHeads = n.GetInt("kv_num_heads", 0);
        bool packed = n.Inputs.Count < 2 || n.Inputs[1] is null;
        long parts = packed ? heads + (2 * kvHeads) : heads;
        return o != 0 || q is not { Length: 3 } || q[2].Value is not { } width || parts <= 0 || width % parts != 0 ? null
            : [q[0], q[1], new Dim(heads * (width / parts))];
    }

    /// <summary>com.microsoft MultiHeadAttention output 0: [batch, seq, v hidden] when the value comes as [batch, kv seq, v hidden].</summary>
    public static Dim[]? MultiHeadAttention(ValueFacts f, Node n, int o)
    {
        Dim[]? q = f.InputShape(n, 0);
        Dim[]? v = f.InputShape(n, 2);
        return o != 0 || q is not { Length: 3 } || v is not { Length: 3 } ? null : [q[0], q[1], v[2]];
    }

    /// <summary>SoftmaxCrossEntropyLoss: a scalar, or the labels' shape with reduction = none.</summary>
    public static Dim[]? SoftmaxCrossEntropyLoss(ValueFacts f, Node n, int o) =>
        o != 0 ? null : n.GetAttribute("reduction")?.AsString() == "none" ? f.InputShape(n, 1) : [];

    /// <summary>
    /// com.microsoft SkipLayerNormalization / SkipSimplifiedLayerNormalization: the output (0) and the input + skip
    /// sum (3) have the input's shape; the statistics outputs (1, 2) are not inferred.
    /// </summary>
    public static Dim[]? SkipNormalization(ValueFacts f, Node n, int o) => o is 0 or 3 ? f.InputShape(n, 0) : null;

    /// <summary>Transpose by perm (reversed axes by default).</summary>
    public static Dim[]? Transpose(ValueFacts f, Node n, int o)
    {
        if (o != 0)
        {
            return null;
        }

        Dim[]? x = f.InputShape(n, 0);
        if (x is null)
        {
            return n.GetAttribute("perm") is { } p ? new Dim[p.AsInts().Count] : null;
        }

        long[] perm = n.GetAttribute("perm")?.AsInts().ToArray() ?? Enumerable.Range(0, x.Length).Reverse().Select(i => (long)i).ToArray();
        return perm.Select(p => x[p]).ToArray();
    }

    /// <summary>Reshape: the target read symbolically, 0 copying the input's dim, -1 solved when the symbols cancel.</summary>
    public static Dim[]? Reshape(ValueFacts f, Node n, int o)
    {
        if (o != 0)
        {
            return null;
        }

        Dim[]? target = f.SymbolicInts(n.Inputs[1]);
        Dim[]? x = f.InputShape(n, 0);
        if (target is null)
        {
            return f.StaticLength(n.Inputs[1]) is { } length ? new Dim[length] : null;
        }

        var dims = new Dim[target.Length];
        int inferred = -1;
        for (int i = 0; i < target.Length; i++)
        {
            dims[i] = target[i].Value switch
            {
                0 when x is not null && i < x.Length && n.GetInt("allowzero", 0) == 0 => x[i],
                > 0 => target[i],
                null => target[i],
                _ => default,
            };
            inferred = target[i].Value == -1 ? i : inferred;
        }

        if (inferred >= 0 && x is not null)
        {
            dims[inferred] = ValueFacts.Quotient(x, dims.Where((_, i) => i != inferred).ToArray());
        }

        return dims;
    }

    /// <summary>Split: every output, its part of the axis (given sizes, or equal parts of a fixed axis).</summary>
    public static Dim[]? Split(ValueFacts f, Node n, int o)
    {
        Dim[]? x = f.InputShape(n, 0);
        if (x is null)
        {
            return null;
        }

        int axis = (int)n.GetInt("axis", 0);
        axis = axis < 0 ? axis + x.Length : axis;
        long[]? sizes = n.GetAttribute("split")?.AsInts().ToArray() ?? (n.Inputs.Count > 1 ? ValueFacts.ConstInts(n.Inputs[1]) : null);
        Dim[] result = [.. x];
        if (sizes is not null && o < sizes.Length)
        {
            result[axis] = new Dim(sizes[o]);
        }
        else if (sizes is null && x[axis].Value is { } total && total % n.Outputs.Count == 0)
        {
            result[axis] = new Dim(total / n.Outputs.Count);
        }
        else
        {
            result[axis] = default;
        }

        return result;
    }

    /// <summary>Squeeze of constant axes.</summary>
    public static Dim[]? Squeeze(ValueFacts f, Node n, int o)
    {
        Dim[]? x = f.InputShape(n, 0);
        long[]? axes = n.GetAttribute("axes")?.AsInts().ToArray() ?? (n.Inputs.Count > 1 ? ValueFacts.ConstInts(n.Inputs[1]) : null);
        if (o != 0 || x is null || axes is null)
        {
            return null;
        }

        var set = axes.Select(a => (int)(a < 0 ? a + x.Length : a)).ToHashSet();
        return x.Where((_, i) => !set.Contains(i)).ToArray();
    }

    /// <summary>Unsqueeze at constant axes.</summary>
    public static Dim[]? Unsqueeze(ValueFacts f, Node n, int o)
    {
        Dim[]? x = f.InputShape(n, 0);
        long[]? axes = n.GetAttribute("axes")?.AsInts().ToArray() ?? ValueFacts.ConstInts(n.Inputs.Count > 1 ? n.Inputs[1] : null);
        if (o != 0 || x is null || axes is null)
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

    /// <summary>Gather: data dims before the axis, the indices' dims, data dims after it.</summary>
    public static Dim[]? Gather(ValueFacts f, Node n, int o)
    {
        Dim[]? data = f.InputShape(n, 0);
        Dim[]? idx = f.InputShape(n, 1);
        if (o != 0 || data is null || idx is null)
        {
            return null;
        }

        int axis = (int)n.GetInt("axis", 0);
        axis = axis < 0 ? axis + data.Length : axis;
        return [.. data[..axis], .. idx, .. data[(axis + 1)..]];
    }

    /// <summary>LinearCrossEntropy: a scalar loss and the gradient of the rows, shaped like them.</summary>
    public static Dim[]? LinearCrossEntropy(ValueFacts f, Node n, int o) => o == 0 ? [] : f.InputShape(n, 0);

    /// <summary>ReduceSum / ReduceMean / ReduceMax / ReduceLogSumExp over constant axes (attribute or input), keepdims or not.</summary>
    public static Dim[]? Reduce(ValueFacts f, Node n, int o)
    {
        Dim[]? x = f.InputShape(n, 0);
        long[]? axes = n.GetAttribute("axes")?.AsInts().ToArray() ?? (n.Inputs.Count > 1 ? ValueFacts.ConstInts(n.Inputs[1]) : []);
        if (o != 0 || x is null || axes is null)
        {
            return null;
        }

        bool keep = n.GetInt("keepdims", 1) != 0;
        var set = axes.Length == 0 ? Enumerable.Range(0, x.Length).ToHashSet() : axes.Select(a => (int)(a < 0 ? a + x.Length : a)).ToHashSet();
        return x.Select((d, i) => set.Contains(i) ? (keep ? new Dim(1) : (Dim?)null) : d).Where(d => d is not null).Select(d => d!.Value).ToArray();
    }

    /// <summary>Expand: both-way broadcast of the input against a constant target (a 1 there keeps the input's dim).</summary>
    public static Dim[]? Expand(ValueFacts f, Node n, int o)
    {
        if (o != 0)
        {
            return null;
        }

        Dim[]? x = f.InputShape(n, 0);
        if (x is not null && ValueFacts.ConstInts(n.Inputs[1]) is { } target)
        {
            return ValueFacts.Broadcast([x, target.Select(t => new Dim(t)).ToArray()]);
        }

        int? length = f.StaticLength(n.Inputs[1]);
        return x is null || length is null ? null : new Dim[Math.Max(x.Length, length.Value)];
    }

    /// <summary>Concat: fixed sizes summed on the axis; elsewhere the dim any input knows.</summary>
    public static Dim[]? Concat(ValueFacts f, Node n, int o)
    {
        var parts = n.Inputs.Select(i => i is null ? null : f.ShapeOf(i)).ToList();
        if (o != 0 || parts.Count == 0 || parts.Any(p => p is null) || parts.Any(p => p!.Length != parts[0]!.Length))
        {
            return null;
        }

        int rank = parts[0]!.Length;
        int axis = (int)n.GetInt("axis", 0);
        axis = axis < 0 ? axis + rank : axis;
        var dims = new Dim[rank];
        for (int i = 0; i < rank; i++)
        {
            // Off the axis every input has the same dim; a known one among them tells it.
            dims[i] = i == axis
                ? parts.All(p => p![i].IsFixed) ? new Dim(parts.Sum(p => p![i].Value!.Value)) : default
                : parts.Select(p => p![i]).FirstOrDefault(d => d.IsFixed || d.Param is not null);
        }

        return dims;
    }

    /// <summary>Slice with constant starts, axes and steps; ends constant or read from another value's shape.</summary>
    public static Dim[]? Slice(ValueFacts f, Node n, int o)
    {
        Dim[]? x = f.InputShape(n, 0);
        if (o != 0 || x is null)
        {
            return null;
        }

        if (n.MetadataProps.Any(p => p.Key == Artifacts.LinearCrossEntropy.ChunkRowsKey))
        {
            // A row chunk of the fused head: its rows are a size the walk binds, the last chunks shorter.
            return [new Dim(Artifacts.LinearCrossEntropy.ChunkRowsSymbol), .. x[1..]];
        }

        long[]? starts = ValueFacts.ConstInts(n.Inputs.ElementAtOrDefault(1));
        Dim[]? endDims = f.SymbolicInts(n.Inputs.ElementAtOrDefault(2));
        long[]? ends = endDims?.Select(d => d.Value ?? long.MinValue).ToArray();
        long[]? axes = n.Inputs.Count > 3 && n.Inputs[3] is not null ? ValueFacts.ConstInts(n.Inputs[3]) : starts is null ? null : Enumerable.Range(0, starts.Length).Select(i => (long)i).ToArray();
        long[]? steps = n.Inputs.Count > 4 && n.Inputs[4] is not null ? ValueFacts.ConstInts(n.Inputs[4]) : starts?.Select(_ => 1L).ToArray();
        if (starts is null || ends is null || axes is null || steps is null)
        {
            return new Dim[x.Length];
        }

        Dim[] dims = [.. x];
        for (int k = 0; k < axes.Length; k++)
        {
            int axis = (int)(axes[k] < 0 ? axes[k] + x.Length : axes[k]);
            // A symbolic end read from another value's shape: slicing [0, n) gives n in any run that succeeds (a
            // shorter result would fail to broadcast against the values it meets).
            dims[axis] = ends[k] == long.MinValue
                ? (starts[k] == 0 && steps[k] == 1 && endDims![k].Param is not null ? endDims[k] : default)
                : ValueFacts.SliceLength(x[axis], starts[k], ends[k], steps[k]);
        }

        return dims;
    }

    /// <summary>Shape (whole): [rank of the input].</summary>
    public static Dim[]? Shape(ValueFacts f, Node n, int o) =>
        o != 0 || n.GetAttribute("start") is not null || n.GetAttribute("end") is not null ? null
            : f.RankOf(n.Inputs[0]!) is { } r ? [new Dim(r)] : [default];

    /// <summary>ConstantOfShape: the shape input's elements read symbolically, or only its length.</summary>
    public static Dim[]? ConstantOfShape(ValueFacts f, Node n, int o) =>
        o != 0 ? null : f.SymbolicInts(n.Inputs[0]) is { } filled ? filled : f.StaticLength(n.Inputs[0]) is { } length ? new Dim[length] : null;

    /// <summary>Range(0, n, 1) is [n]; n is often a dim read with Shape and Gather (position ids, rotary tables).</summary>
    public static Dim[]? Range(ValueFacts f, Node n, int o)
    {
        if (o != 0)
        {
            return null;
        }

        long[]? start = ValueFacts.ConstInts(n.Inputs[0]);
        long[]? delta = ValueFacts.ConstInts(n.Inputs[2]);
        return start is [0] && delta is [1] ? [f.ScalarDim(n.Inputs[1])] : [default];
    }
}
