using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Y = conv(X, W) + B (group = 1, explicit pads, any number of spatial axes s):
///   dB = Σ over batch and spatial axes of dY;
///   dW = transpose₀₁(conv(transpose₀₁(X), transpose₀₁(dY), strides = dilations, dilations = strides, pads))[.., :k]:
///        the correlation of the input with the output gradient, whose spatial extent may exceed k by the stride
///        remainder (cut off);
///   dX = convtranspose(dY, W, strides, begin pads, dilations), zero-padded or cut at the end to X's extent: input
///        positions no output window reads (the stride remainder at the end) get zero.
/// </summary>
public sealed class ConvGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Conv"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        if (node.GetInt("group", 1) != 1)
        {
            throw new LoraException($"Conv '{node.Name}' has group={node.GetInt("group", 1)}; only group=1 has a gradient rule.");
        }

        if (node.GetAttribute("auto_pad") is { } autoPad && autoPad.AsString() is not ("NOTSET" or ""))
        {
            throw new LoraException($"Conv '{node.Name}' uses auto_pad={autoPad.AsString()}; only explicit pads have a gradient rule.");
        }

        Value x = step.Input(0);
        Value w = step.Input(1);
        Value dy = step.OutputGradient(0)!;
        int spatial = node.GetAttribute("kernel_shape")?.AsInts().Count
            ?? (context.RankOf(w) ?? context.RankOf(x) ?? throw new LoraException($"Conv '{node.Name}': the rank of its weight is unknown.")) - 2;
        long[] ones = Enumerable.Repeat(1L, spatial).ToArray();
        long[] strides = node.GetAttribute("strides")?.AsInts().ToArray() ?? ones;
        long[] dilations = node.GetAttribute("dilations")?.AsInts().ToArray() ?? ones;
        long[] pads = node.GetAttribute("pads")?.AsInts().ToArray() ?? new long[2 * spatial];
        long[] swap = [1, 0, .. Enumerable.Range(2, spatial).Select(i => (long)i)];
        long[] spatialAxes = Enumerable.Range(2, spatial).Select(i => (long)i).ToArray();

        if (step.NeedsGradient(2))
        {
            step.SetInputGradient(2, context.ReduceSum(dy, [0, .. spatialAxes], keepDims: false));
        }

        if (step.NeedsGradient(1))
        {
            Value xT = context.Op("Transpose", [x], Attr.Ints("perm", swap));
            Value dyT = context.Op("Transpose", [dy], Attr.Ints("perm", swap));
            Value full = context.Op("Conv", [xT, dyT], Attr.Ints("strides", dilations), Attr.Ints("dilations", strides), Attr.Ints("pads", pads));
            Value kernel = context.Op("Slice", [context.ShapeOfValue(w), context.Ints(2), context.Ints(2 + spatial)]);
            Value cut = context.Op("Slice", [full, context.Ints(new long[spatial]), kernel, context.Ints(spatialAxes)]);
            step.SetInputGradient(1, context.Op("Transpose", [cut], Attr.Ints("perm", swap)));
        }

        if (step.NeedsGradient(0))
        {
            // The transposed conv un-pads only the begin: the end pad may lie (partly) in the stride remainder that
            // no window reaches. Its result is then at most s − 1 short of X (zeros are padded) or longer (cut).
            long[] beginOnly = [.. pads.Take(spatial), .. new long[spatial]];
            Value back = context.Op("ConvTranspose", [dy, w], Attr.Ints("strides", strides), Attr.Ints("dilations", dilations), Attr.Ints("pads", beginOnly));
            long[] padAll = [.. new long[2 + spatial], 0, 0, .. strides.Select(v => v - 1)];
            if (strides.Any(v => v > 1))
            {
                back = context.Opset >= 11
                    ? context.Op("Pad", [back, context.Ints(padAll)])
                    : context.Op("Pad", [back], Attr.Ints("pads", padAll));
            }

            Value shapeX = context.Op("Slice", [context.ShapeOfValue(x), context.Ints(2), context.Ints(2 + spatial)]);
            step.SetInputGradient(0, context.Op("Slice", [back, context.Ints(new long[spatial]), shapeX, context.Ints(spatialAxes)]));
        }
    }
}
