using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Backward of layer and RMS normalization over the trailing axes from <c>axis</c>, recomputing the statistics
/// (cheaper than keeping them, and the forward outputs for them are optional):
/// x̂ = (x − μ)·r (LayerNorm) or x·r (RMS), r = 1/√(var + ε);
/// dx = r·(g − mean(g) − x̂·mean(g·x̂)) (LayerNorm) or r·(g − x̂·mean(g·x̂)) (RMS), with g = dy·γ.
/// </summary>
internal static class NormalizationMath
{
    public static long[] Axes(GradientContext context, Node node, Value x)
    {
        long axis = node.GetInt("axis", -1);
        if (axis < 0)
        {
            return Enumerable.Range(0, (int)-axis).Select(i => axis + i).ToArray();
        }

        int rank = context.RankOf(x) ?? throw new LoraException($"{node.OpType} '{node.Name}' normalizes from axis {axis} of an input of unknown rank; use a negative axis.");
        return Enumerable.Range((int)axis, rank - (int)axis).Select(i => (long)i).ToArray();
    }

    /// <summary>Returns (dx, x̂).</summary>
    public static (Value Dx, Value XHat) Backward(GradientContext context, Value x, Value scale, Value dy, long[] axes, double epsilon, bool rms)
    {
        Value eps = context.Scalar(epsilon, x);
        Value centered = rms ? x : context.Sub(x, context.ReduceMean(x, axes));
        Value variance = context.ReduceMean(context.Mul(centered, centered), axes);
        Value rstd = context.Op("Reciprocal", [context.Op("Sqrt", [context.Add(variance, eps)])]);
        Value xhat = context.Mul(centered, rstd);
        Value g = context.Mul(dy, context.CastLike(scale, dy));
        Value proj = context.Mul(xhat, context.ReduceMean(context.Mul(g, xhat), axes));
        Value inner = rms ? context.Sub(g, proj) : context.Sub(context.Sub(g, context.ReduceMean(g, axes)), proj);
        return (context.Mul(rstd, inner), xhat);
    }

    /// <summary>Sets the gradients of scale (input <paramref name="scaleIndex"/>) and bias (input <paramref name="biasIndex"/>).</summary>
    public static void AffineGradients(GradientContext context, BackwardStep step, Value dy, Value xhat, int scaleIndex, int biasIndex, Value y)
    {
        if (step.NeedsGradient(scaleIndex))
        {
            Value scale = step.Input(scaleIndex);
            step.SetInputGradient(scaleIndex, context.CastLike(context.Unbroadcast(context.Mul(dy, xhat), scale, y), scale));
        }

        if (biasIndex >= 0 && step.NeedsGradient(biasIndex))
        {
            Value bias = step.Input(biasIndex);
            step.SetInputGradient(biasIndex, context.CastLike(context.Unbroadcast(dy, bias, y), bias));
        }
    }
}

/// <summary>LayerNormalization(X, γ, β): see <see cref="NormalizationMath"/>.</summary>
public sealed class LayerNormalizationGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["LayerNormalization"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value x = step.Input(0);
        Value dy = step.OutputGradient(0) ?? throw new LoraException($"Only the main output of LayerNormalization '{step.Node.Name}' can be differentiated.");
        long[] axes = NormalizationMath.Axes(context, step.Node, x);
        (Value dx, Value xhat) = NormalizationMath.Backward(context, x, step.Input(1), dy, axes, step.Node.GetFloat("epsilon", 1e-5f), rms: false);
        step.SetInputGradient(0, dx);
        NormalizationMath.AffineGradients(context, step, dy, xhat, 1, step.OptionalInput(2) is null ? -1 : 2, step.Output(0));
    }
}

/// <summary>SimplifiedLayerNormalization / RMSNormalization(X, γ): RMS normalization, see <see cref="NormalizationMath"/>.</summary>
public sealed class RmsNormalizationGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["SimplifiedLayerNormalization", "RMSNormalization"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value x = step.Input(0);
        Value dy = step.OutputGradient(0) ?? throw new LoraException($"Only the main output of {step.Node.OpType} '{step.Node.Name}' can be differentiated.");
        long[] axes = NormalizationMath.Axes(context, step.Node, x);
        (Value dx, Value xhat) = NormalizationMath.Backward(context, x, step.Input(1), dy, axes, step.Node.GetFloat("epsilon", 1e-5f), rms: true);
        step.SetInputGradient(0, dx);
        NormalizationMath.AffineGradients(context, step, dy, xhat, 1, -1, step.Output(0));
    }
}

/// <summary>
/// com.microsoft SkipLayerNormalization(input, skip, γ, β?, bias?) and SkipSimplifiedLayerNormalization(input, skip,
/// γ, bias?): s = input + skip (+ bias), output = norm(s), output 3 = s. ds = norm backward + d(output 3); input,
/// skip and bias each get ds summed down to their shapes.
/// </summary>
public sealed class SkipNormalizationGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        bool rms = node.OpType == "SkipSimplifiedLayerNormalization";
        int biasIndex = rms ? 3 : 4;
        int betaIndex = rms ? -1 : 3;
        Value input = step.Input(0);
        Value s = context.Add(input, step.Input(1));
        if (step.OptionalInput(biasIndex) is { } bias)
        {
            s = context.Add(s, bias);
        }

        var terms = new List<Value>();
        if (step.OutputGradient(0) is { } dy)
        {
            (Value ds, Value xhat) = NormalizationMath.Backward(context, s, step.Input(2), dy, [-1], node.GetFloat("epsilon", 1e-12f), rms);
            terms.Add(ds);
            NormalizationMath.AffineGradients(context, step, dy, xhat, 2, betaIndex >= 0 && step.OptionalInput(betaIndex) is not null ? betaIndex : -1, step.Output(0));
        }

        if (step.OutputGradient(1) is not null || step.OutputGradient(2) is not null)
        {
            throw new LoraException($"The mean / inverse-std outputs of {node.OpType} '{node.Name}' cannot be differentiated.");
        }

        if (step.OutputGradient(3) is { } dsum)
        {
            terms.Add(dsum);
        }

        Value total = context.Sum(terms);
        step.SetInputGradient(0, context.Unbroadcast(total, input, s));
        step.SetInputGradient(1, context.Unbroadcast(total, step.Input(1), s));
        if (step.OptionalInput(biasIndex) is { } b)
        {
            step.SetInputGradient(biasIndex, context.Unbroadcast(total, b, s));
        }
    }
}
