using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>Derivatives of the two GELU forms.</summary>
internal static class GeluMath
{
    /// <summary>Exact GELU: d/dx x·Φ(x) = Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·e^(−x²/2)/√(2π).</summary>
    public static Value Exact(GradientContext c, Value x)
    {
        Value cdf = c.Mul(c.Add(c.Op("Erf", [c.Mul(x, c.Scalar(1 / Math.Sqrt(2), x))]), c.Scalar(1, x)), c.Scalar(0.5, x));
        Value pdf = c.Mul(c.Op("Exp", [c.Mul(c.Mul(x, x), c.Scalar(-0.5, x))]), c.Scalar(1 / Math.Sqrt(2 * Math.PI), x));
        return c.Add(cdf, c.Mul(x, pdf));
    }

    /// <summary>
    /// Tanh GELU y = ½x(1 + t), t = tanh(u), u = √(2/π)(x + 0.044715x³):
    /// dy/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²).
    /// </summary>
    public static Value Tanh(GradientContext c, Value x)
    {
        const double A = 0.044715;
        double k = Math.Sqrt(2 / Math.PI);
        Value x2 = c.Mul(x, x);
        Value u = c.Mul(c.Mul(x, c.Add(c.Mul(x2, c.Scalar(A, x)), c.Scalar(1, x))), c.Scalar(k, x));
        Value t = c.Op("Tanh", [u]);
        Value left = c.Mul(c.Add(t, c.Scalar(1, x)), c.Scalar(0.5, x));
        Value du = c.Mul(c.Add(c.Mul(x2, c.Scalar(3 * A, x)), c.Scalar(1, x)), c.Scalar(k, x));
        Value right = c.Mul(c.Mul(c.Mul(x, c.Scalar(0.5, x)), c.Sub(c.Scalar(1, x), c.Mul(t, t))), du);
        return c.Add(left, right);
    }
}

/// <summary>GELU: com.microsoft Gelu (exact) and ONNX Gelu (opset 20, approximate = none | tanh).</summary>
public sealed class GeluGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Gelu"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Value x = step.Input(0);
        bool tanh = step.Node.GetAttribute("approximate")?.AsString() == "tanh";
        Value local = tanh ? GeluMath.Tanh(context, x) : GeluMath.Exact(context, x);
        step.SetInputGradient(0, context.Mul(step.OutputGradient(0)!, local));
    }
}

/// <summary>com.microsoft Gelu: the exact form.</summary>
public sealed class MsGeluGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["Gelu"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Mul(step.OutputGradient(0)!, GeluMath.Exact(context, step.Input(0))));
        }
    }
}

/// <summary>com.microsoft FastGelu(X, bias?): tanh GELU of X + bias; bias gets dX summed to its shape.</summary>
public sealed class FastGeluGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["FastGelu"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value x = step.Input(0);
        Value? bias = step.OptionalInput(1);
        Value z = bias is null ? x : context.Add(x, bias);
        Value dz = context.Mul(step.OutputGradient(0)!, GeluMath.Tanh(context, z));
        step.SetInputGradient(0, bias is null ? dz : context.Unbroadcast(dz, x, z));
        if (bias is not null)
        {
            step.SetInputGradient(1, context.Unbroadcast(dz, bias, z));
        }
    }
}

/// <summary>
/// RotaryEmbedding rotates pairs by θ(position): y = R(θ)x. R is orthogonal and R(θ)ᵀ = R(−θ), so the gradient is the
/// same op with the sine cache negated: dx = RotaryEmbedding(dy, …, −sin). Works for com.microsoft (sin = input 3) and
/// ONNX opset 23 (sin = input 2), interleaved or half layouts, partial rotary dims. Caches and positions get none.
/// </summary>
public sealed class MsRotaryEmbeddingGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["RotaryEmbedding"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step) => RotaryMath.Backward(context, step, sinIndex: 3, "com.microsoft");
}

/// <summary>ONNX RotaryEmbedding (opset 23): see <see cref="MsRotaryEmbeddingGradient"/>.</summary>
public sealed class RotaryEmbeddingGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["RotaryEmbedding"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step) => RotaryMath.Backward(context, step, sinIndex: 2, string.Empty);
}

internal static class RotaryMath
{
    public static void Backward(GradientContext context, BackwardStep step, int sinIndex, string domain)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        var inputs = node.Inputs.ToArray();
        inputs[0] = step.OutputGradient(0)!;
        inputs[sinIndex] = context.Neg(step.Input(sinIndex));
        Value dx = context.Builder.Op(node.OpType, inputs, [.. node.Attributes.Values], domain);
        step.SetInputGradient(0, dx);
    }
}
