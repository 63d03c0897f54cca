using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Reductions: ReduceSum / ReduceMean give dY back its reduced axes (when keepdims = 0) and expand it to the shape of
/// X. Axes come from the attribute (before the op's axes-as-input opset) or from input 1, constant or not.
/// </summary>
internal static class ReduceOps
{
    /// <summary>The entries.</summary>
    public static OpEntry[] Entries =>
    [
        // Y = Σ_axes X: dX = expand(dY).
        Op.Grad("ReduceSum", Shapes.Reduce, (c, s) => Backward(c, s, axesInputOpset: 13, (_, g, _, _) => g), 1),
        // Y = mean_axes X: dX = expand(dY) · |Y| / |X|.
        Op.Grad("ReduceMean", Shapes.Reduce, (c, s) => Backward(c, s, axesInputOpset: 18, MeanScale), 1),
        Op.NoVjp(string.Empty, "ReduceMax", Shapes.Reduce),
        Op.NoVjp(string.Empty, "ReduceLogSumExp", Shapes.Reduce),
        Op.Cut("ArgMax", Shapes.Unknown, Types.Int64),
        Op.Cut("ArgMin", Shapes.Unknown, Types.Int64),
    ];

    /// <summary>The shared VJP; <paramref name="scale"/>(dY, X, Y) applies the local scale (1 for sums, 1/count for means).</summary>
    private static void Backward(GradientContext context, BackwardStep step, long axesInputOpset, Func<GradientContext, Value, Value, Value, Value> scale)
    {
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        Value x = step.Input(0);
        Value dy = step.OutputGradient(0)!;
        bool keepDims = node.GetInt("keepdims", 1) != 0;
        long[]? constAxes = null;
        Value? axesInput = null;
        if (context.Opset >= axesInputOpset)
        {
            axesInput = step.OptionalInput(1);
            constAxes = axesInput is null ? [] : ValueFacts.ConstInts(axesInput);
        }
        else
        {
            constAxes = node.GetAttribute("axes")?.AsInts().ToArray() ?? [];
        }

        bool reduceAll = constAxes is { Length: 0 } && node.GetInt("noop_with_empty_axes", 0) == 0;
        if (constAxes is { Length: 0 } && !reduceAll)
        {
            // No-op reduction: Y = X.
            step.SetInputGradient(0, scale(context, dy, x, step.Output(0)));
            return;
        }

        Value g = dy;
        if (!keepDims && !reduceAll)
        {
            g = constAxes is not null ? context.Unsqueeze(dy, constAxes) : context.Op("Unsqueeze", [dy, axesInput!]);
        }

        // Scaling before the Expand touches |Y| elements instead of |X|.
        Value scaled = scale(context, g, x, step.Output(0));
        Value shape = StaticExpandShape(context.ShapeOf(x), reduceAll ? null : constAxes) is { } target ? context.Ints(target) : context.ShapeOfValue(x);
        step.SetInputGradient(0, context.Op("Expand", [scaled, shape]));
    }

    /// <summary>
    /// Constant Expand target when every reduced axis has a fixed size: that size on reduced axes and 1 elsewhere (the
    /// gradient already has X's size there, symbolic or not). <paramref name="axes"/> null means every axis.
    /// </summary>
    private static long[]? StaticExpandShape(Dim[]? xs, long[]? axes)
    {
        if (xs is null)
        {
            return null;
        }

        var reduced = axes is null ? Enumerable.Range(0, xs.Length).ToHashSet() : axes.Select(a => (int)(a < 0 ? a + xs.Length : a)).ToHashSet();
        if (reduced.Any(i => i < 0 || i >= xs.Length || !xs[i].IsFixed))
        {
            return null;
        }

        return xs.Select((d, i) => reduced.Contains(i) ? d.Value!.Value : 1L).ToArray();
    }

    /// <summary>Y = mean_axes X: the gradient is scaled by |Y| / |X|.</summary>
    private static Value MeanScale(GradientContext context, Value expanded, Value x, Value y)
    {
        Dim[]? xs = context.ShapeOf(x);
        Dim[]? ys = context.ShapeOf(y);
        if (StaticCount(xs, ys) is { } count)
        {
            return context.Mul(expanded, context.Scalar(1.0 / count, expanded));
        }

        DataType type = context.TypeOf(x);
        var to = Attr.Int("to", (long)(type == DataType.Undefined ? DataType.Float : type));
        Value sizeX = context.Op("Cast", [context.Op("Size", [x])], to);
        Value sizeY = context.Op("Cast", [context.Op("Size", [y])], to);
        return context.Div(context.Mul(expanded, sizeY), sizeX);
    }

    /// <summary>|X| / |Y| when it is a constant: fixed sizes, and symbols that X and Y share cancel (e.g. [b, s, 64] over [b, s, 1]).</summary>
    private static double? StaticCount(Dim[]? xs, Dim[]? ys)
    {
        if (xs is null || ys is null || xs.Concat(ys).Any(d => !d.IsFixed && d.Param is null))
        {
            return null;
        }

        var symbols = xs.Where(d => d.Param is not null).Select(d => d.Param!).ToList();
        foreach (Dim d in ys.Where(d => d.Param is not null))
        {
            if (!symbols.Remove(d.Param!))
            {
                return null;
            }
        }

        return symbols.Count > 0 ? null
            : xs.Where(d => d.IsFixed).Aggregate(1.0, (a, d) => a * d.Value!.Value) / ys.Where(d => d.IsFixed).Aggregate(1.0, (a, d) => a * d.Value!.Value);
    }
}
