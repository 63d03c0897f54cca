using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Ops that move, pick or combine data without arithmetic (their shape, axes and index inputs get no gradient), and
/// the ops that make shapes, constants, indices and random tensors, which gradients do not flow through.
/// </summary>
internal static class ShapeOps
{
    /// <summary>The entries.</summary>
    public static OpEntry[] Entries =>
    [
        // Reshape, Squeeze, Unsqueeze, Flatten only move data: dX = reshape(dY, shape(X)).
        Op.Unary("Reshape", Shapes.Reshape, ReshapeBack, 1),
        Op.Unary("Squeeze", Shapes.Squeeze, ReshapeBack, 1),
        Op.Unary("Unsqueeze", Shapes.Unsqueeze, ReshapeBack, 1),
        Op.Unary("Flatten", Shapes.Unknown, ReshapeBack),
        Op.Grad("Transpose", Shapes.Transpose, TransposeBack),
        // Y = expand(X, shape): dX = unbroadcast(dY).
        Op.Unary("Expand", Shapes.Expand, (c, x, y, dy) => c.Unbroadcast(dy, x, y), 1),
        Op.Grad("Slice", Shapes.Slice, SliceGradient.Backward, 1, 2, 3, 4),
        Op.Grad("Gather", Shapes.Gather, GatherBack, 1),

        // Only the loss lowerings write these (label scores, softmax − onehot); the facts size their buffers.
        Op.NoVjp(string.Empty, "GatherElements", (f, n, o) => o == 0 ? f.InputShape(n, 1) : null),
        Op.NoVjp(string.Empty, "ScatterElements", Shapes.SameAsInput),
        Op.Grad("Concat", Shapes.Concat, ConcatBack),
        Op.Grad("Split", Shapes.Split, SplitBack, 1),

        Op.Cut("Shape", Shapes.Shape, Types.Int64),
        Op.Cut("Size", Shapes.Scalar, Types.Int64),
        Op.Cut("NonZero", Shapes.Unknown, Types.Int64),
        Op.Cut("Range", Shapes.Range),
        Op.Cut("ConstantOfShape", Shapes.ConstantOfShape, Types.ConstantOfShape),
        Op.Cut("Constant", Shapes.Unknown, Types.Constant),
        Op.Cut("EyeLike", Shapes.Unknown),
        Op.Cut("OneHot", Shapes.Unknown, Types.OfInput(2)),
        // Trilu builds causal masks from constants in the exports seen; it is treated as a mask builder.
        Op.Cut("Trilu", Shapes.Unknown),
        Op.Cut("RandomNormal", Shapes.Unknown),
        Op.Cut("RandomUniform", Shapes.Unknown),
        Op.Cut("RandomNormalLike", Shapes.Unknown),
        Op.Cut("RandomUniformLike", Shapes.Unknown),
    ];

    private static Value ReshapeBack(GradientContext context, Value x, Value y, Value dy) =>
        StaticTarget(context.ShapeOf(x), context.ShapeOf(y)) is { } target
            ? context.Op("Reshape", [dy, context.Ints(target)])
            : context.ReshapeLike(dy, x);

    /// <summary>
    /// A constant Reshape target that gives dY (shaped <paramref name="ys"/>) the shape <paramref name="xs"/>: fixed
    /// sizes as they are, 0 (copy dY's size) where X and Y have the same symbol on that axis, and -1 for at most one
    /// other axis. Null when that cannot express it (then the target is read at run time).
    /// </summary>
    internal static long[]? StaticTarget(Dim[]? xs, Dim[]? ys)
    {
        if (xs is null || xs.Any(d => d.Value == 0))
        {
            return null;
        }

        var target = new long[xs.Length];
        bool inferred = false;
        for (int i = 0; i < xs.Length; i++)
        {
            if (xs[i].Value is { } size)
            {
                target[i] = size;
            }
            else if (ys is not null && i < ys.Length && xs[i].Param is not null && ValueFacts.SameDim(xs[i], ys[i]))
            {
                target[i] = 0;
            }
            else if (!inferred)
            {
                target[i] = -1;
                inferred = true;
            }
            else
            {
                return null;
            }
        }

        return target;
    }

    /// <summary>Y = transpose(X, p): dX = transpose(dY, p⁻¹).</summary>
    private static void TransposeBack(GradientContext context, BackwardStep step)
    {
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Value dy = step.OutputGradient(0)!;
        if (step.Node.GetAttribute("perm") is not { } permAttr)
        {
            // Default perm reverses the axes, which is its own inverse.
            step.SetInputGradient(0, context.Op("Transpose", [dy]));
            return;
        }

        IReadOnlyList<long> perm = permAttr.AsInts();
        var inverse = new long[perm.Count];
        for (int i = 0; i < perm.Count; i++)
        {
            inverse[perm[i]] = i;
        }

        step.SetInputGradient(0, context.Op("Transpose", [dy], Attr.Ints("perm", inverse)));
    }

    /// <summary>Y = gather(X, indices, axis): dX = dY scatter-added into zeros (repeated indices accumulate).</summary>
    private static void GatherBack(GradientContext context, BackwardStep step)
    {
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        step.SetInputGradient(0, IndexScatter.Backward(context, step.Input(0), step.OutputGradient(0)!, positions =>
            context.Op("Gather", [positions, step.Input(1)], [.. node.Attributes.Values]), accumulate: true));
    }

    /// <summary>Y = concat(X₀…Xₙ, axis): dXᵢ = split(dY, sizes along axis)ᵢ.</summary>
    private static void ConcatBack(GradientContext context, BackwardStep step)
    {
        Node node = step.Node;
        long axis = node.GetInt("axis", 0);
        int n = node.Inputs.Count;
        var sizes = new Value[n];
        for (int i = 0; i < n; i++)
        {
            sizes[i] = context.Op("Gather", [context.ShapeOfValue(step.Input(i)), context.Ints(axis)]);
        }

        Value split = context.Op("Concat", sizes, Attr.Int("axis", 0));
        IReadOnlyList<Value> parts = context.Builder.OpMulti("Split", [step.OutputGradient(0)!, split], n, [Attr.Int("axis", axis)]);
        for (int i = 0; i < n; i++)
        {
            step.SetInputGradient(i, parts[i]);
        }
    }

    /// <summary>Yᵢ = split(X, axis)ᵢ: dX = concat(dYᵢ, axis), with zeros for outputs no gradient reaches.</summary>
    private static void SplitBack(GradientContext context, BackwardStep step)
    {
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        var parts = node.Outputs.Select((o, i) => step.OutputGradient(i) ?? context.ZerosLike(o)).ToArray();
        step.SetInputGradient(0, context.Op("Concat", parts, Attr.Int("axis", node.GetInt("axis", 0))));
    }
}

/// <summary>
/// Scatter of dY into zeros shaped like X, through the flat positions that the forward op picked. The positions come
/// from running the same op on an index tensor iota(|X|) shaped like X, which works for every form of the op
/// (dynamic starts/ends/steps, negative indices, any axis) without knowing ranks.
/// </summary>
internal static class IndexScatter
{
    public static Value Backward(GradientContext context, Value x, Value dy, Func<Value, Value> sameSelection, bool accumulate)
    {
        Value size = context.Op("Size", [x]);
        Value iota = context.Op("Range", [context.Scalar(0, DataType.Int64), size, context.Scalar(1, DataType.Int64)]);
        Value positions = sameSelection(context.ReshapeLike(iota, x));
        Value flatPositions = context.Op("Reshape", [positions, context.Ints(-1, 1)]);
        Value flatDy = context.Op("Reshape", [dy, context.Ints(-1)]);
        Value zeros = context.Op("ConstantOfShape", [context.Unsqueeze(size, [0])], Attr.Tensor("value", ZeroOf(context.TypeOf(dy))));
        Attr[] attrs = accumulate ? [Attr.String("reduction", "add")] : [];
        if (accumulate && context.Opset < 16)
        {
            throw new LoraException($"The gradient of a Gather needs ScatterND with reduction='add', which needs opset 16 (model has {context.Opset}).");
        }

        Value scattered = context.Op("ScatterND", [zeros, flatPositions, flatDy], attrs);
        return context.ReshapeLike(scattered, x);
    }

    private static InMemoryTensor ZeroOf(DataType type) => type switch
    {
        DataType.Double => InMemoryTensor.From("value", type, [1], [0.0]),
        DataType.Float16 => InMemoryTensor.From("value", type, [1], [(Half)0]),
        _ => InMemoryTensor.FromFloats("value", [1], [0f]),
    };
}

/// <summary>Y = slice(X): dX = dY scattered into zeros at the sliced positions.</summary>
internal static class SliceGradient
{
    /// <summary>The VJP.</summary>
    public static void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        Value dy = step.OutputGradient(0)!;
        if (PadsOf(context, node) is { } pads)
        {
            // A contiguous slice whose bounds do not depend on the axis size (e.g. the causal-LM shift [0, -1)) is
            // undone by zero padding, far cheaper than a scatter into a zero tensor of X's size.
            step.SetInputGradient(0, context.Op("Pad", [dy, context.Ints(pads)]));
            return;
        }

        step.SetInputGradient(0, IndexScatter.Backward(context, step.Input(0), dy, positions =>
            context.Op("Slice", [positions, .. node.Inputs.Skip(1)], [.. node.Attributes.Values]), accumulate: false));
    }

    /// <summary>
    /// Pad amounts [begin..., end...] that turn dY back into X's shape, when the slice has step 1, constant
    /// non-negative starts and constant ends that are negative (counted from the end) or past the end; else null.
    /// </summary>
    private static long[]? PadsOf(GradientContext context, Node node)
    {
        if (context.Opset < 11 || node.Inputs.Count < 3 || context.RankOf(node.Inputs[0]!) is not { } rank)
        {
            return null;
        }

        long[]? starts = ValueFacts.ConstInts(node.Inputs[1]);
        long[]? ends = ValueFacts.ConstInts(node.Inputs[2]);
        long[]? axes = node.Inputs.Count > 3 && node.Inputs[3] is not null ? ValueFacts.ConstInts(node.Inputs[3]) : starts?.Select((_, i) => (long)i).ToArray();
        long[]? steps = node.Inputs.Count > 4 && node.Inputs[4] is not null ? ValueFacts.ConstInts(node.Inputs[4]) : starts?.Select(_ => 1L).ToArray();
        if (starts is null || ends is null || axes is null || steps is null || steps.Any(t => t != 1) || starts.Length != ends.Length || axes.Length != starts.Length)
        {
            return null;
        }

        var pads = new long[2 * rank];
        for (int k = 0; k < axes.Length; k++)
        {
            int axis = (int)(axes[k] < 0 ? axes[k] + rank : axes[k]);
            if (starts[k] < 0 || !(ends[k] < 0 || ends[k] >= int.MaxValue) || axis < 0 || axis >= rank)
            {
                return null;
            }

            pads[axis] = starts[k];
            pads[rank + axis] = ends[k] < 0 ? -ends[k] : 0;
        }

        return pads;
    }
}
