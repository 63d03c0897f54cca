using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>Base of rules for default-domain ops: one gradient rule per op type.</summary>
public abstract class GradientRule : IGradientRule
{
    /// <inheritdoc />
    public virtual string Domain => string.Empty;

    /// <inheritdoc />
    public abstract IReadOnlyList<string> OpTypes { get; }

    /// <inheritdoc />
    public abstract void Backward(GradientContext context, BackwardStep step);
}

/// <summary>Y = A + B: dA = unbroadcast(dY), dB = unbroadcast(dY).</summary>
public sealed class AddGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Add"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        for (int i = 0; i < 2; i++)
        {
            if (step.NeedsGradient(i))
            {
                step.SetInputGradient(i, context.Unbroadcast(g, step.Input(i), step.Output(0)));
            }
        }
    }
}

/// <summary>Y = A - B: dA = unbroadcast(dY), dB = unbroadcast(-dY).</summary>
public sealed class SubGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Sub"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Unbroadcast(g, step.Input(0), step.Output(0)));
        }

        if (step.NeedsGradient(1))
        {
            step.SetInputGradient(1, context.Unbroadcast(context.Neg(g), step.Input(1), step.Output(0)));
        }
    }
}

/// <summary>Y = A · B: dA = unbroadcast(dY · B), dB = unbroadcast(dY · A).</summary>
public sealed class MulGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Mul"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Unbroadcast(context.Mul(g, step.Input(1)), step.Input(0), step.Output(0)));
        }

        if (step.NeedsGradient(1))
        {
            step.SetInputGradient(1, context.Unbroadcast(context.Mul(g, step.Input(0)), step.Input(1), step.Output(0)));
        }
    }
}

/// <summary>Y = A / B: dA = unbroadcast(dY / B), dB = unbroadcast(-dY · Y / B).</summary>
public sealed class DivGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Div"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        Value b = step.Input(1);
        Value gOverB = context.Div(g, b);
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Unbroadcast(gOverB, step.Input(0), step.Output(0)));
        }

        if (step.NeedsGradient(1))
        {
            step.SetInputGradient(1, context.Unbroadcast(context.Neg(context.Mul(gOverB, step.Output(0))), b, step.Output(0)));
        }
    }
}

/// <summary>Y = A ^ B: dA = dY · B · A^(B-1) (dY · 2A for B = 2), dB = dY · Y · ln A.</summary>
public sealed class PowGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Pow"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        Value a = step.Input(0);
        Value b = context.CastLike(step.Input(1), a);
        if (step.NeedsGradient(0))
        {
            double? constant = ConstantScalar(step.Input(1));
            Value local = constant == 2.0
                ? context.Mul(a, context.Scalar(2.0, a))
                : context.Mul(b, context.Op("Pow", [a, context.Sub(b, context.Scalar(1.0, a))]));
            step.SetInputGradient(0, context.Unbroadcast(context.Mul(g, local), a, step.Output(0)));
        }

        if (step.NeedsGradient(1))
        {
            Value local = context.Mul(step.Output(0), context.Op("Log", [a]));
            step.SetInputGradient(1, context.CastLike(context.Unbroadcast(context.Mul(g, local), step.Input(1), step.Output(0)), step.Input(1)));
        }
    }

    private static double? ConstantScalar(Value v)
    {
        Tensor? t = v.Initializer ?? (v.Producer is { } p && p.Is("Constant") ? p.GetAttribute("value")?.AsTensor() : null);
        if (t is null || t.ElementCount != 1)
        {
            return null;
        }

        return t.DataType switch
        {
            DataType.Float => t.AsSpan<float>()[0],
            DataType.Double => t.AsSpan<double>()[0],
            DataType.Int64 => t.AsSpan<long>()[0],
            DataType.Int32 => t.AsSpan<int>()[0],
            _ => null,
        };
    }
}

/// <summary>Z = Where(C, X, Y): dX = Where(C, dZ, 0), dY = Where(C, 0, dZ), each unbroadcast; C gets none.</summary>
public sealed class WhereGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Where"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value g = step.OutputGradient(0)!;
        Value c = step.Input(0);
        Value zero = context.Scalar(0.0, g);
        if (step.NeedsGradient(1))
        {
            step.SetInputGradient(1, context.Unbroadcast(context.Op("Where", [c, g, zero]), step.Input(1), step.Output(0)));
        }

        if (step.NeedsGradient(2))
        {
            step.SetInputGradient(2, context.Unbroadcast(context.Op("Where", [c, zero, g]), step.Input(2), step.Output(0)));
        }
    }
}
