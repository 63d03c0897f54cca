using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>Base of single-input ops whose input gradient is dY times a local derivative.</summary>
public abstract class UnaryGradientRule : GradientRule
{
    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, InputGradient(context, step.Input(0), step.Output(0), step.OutputGradient(0)!));
        }
    }

    /// <summary>dX from X, Y and dY.</summary>
    protected abstract Value InputGradient(GradientContext context, Value x, Value y, Value dy);
}

/// <summary>Y = -X: dX = -dY.</summary>
public sealed class NegGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Neg"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) => context.Neg(dy);
}

/// <summary>Y = √X: dX = dY / (2Y).</summary>
public sealed class SqrtGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Sqrt"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) =>
        context.Div(dy, context.Mul(y, context.Scalar(2.0, y)));
}

/// <summary>Y = 1/X: dX = -dY · Y².</summary>
public sealed class ReciprocalGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Reciprocal"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) =>
        context.Neg(context.Mul(dy, context.Mul(y, y)));
}

/// <summary>Y = eˣ: dX = dY · Y.</summary>
public sealed class ExpGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Exp"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) => context.Mul(dy, y);
}

/// <summary>Y = ln X: dX = dY / X.</summary>
public sealed class LogGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Log"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) => context.Div(dy, x);
}

/// <summary>Y = tanh X: dX = dY · (1 - Y²).</summary>
public sealed class TanhGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Tanh"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) =>
        context.Mul(dy, context.Sub(context.Scalar(1.0, y), context.Mul(y, y)));
}

/// <summary>Y = erf X: dX = dY · 2/√π · e^(−X²).</summary>
public sealed class ErfGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Erf"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy)
    {
        Value e = context.Op("Exp", [context.Neg(context.Mul(x, x))]);
        return context.Mul(dy, context.Mul(e, context.Scalar(2.0 / Math.Sqrt(Math.PI), x)));
    }
}

/// <summary>Y = σ(X): dX = dY · Y · (1 − Y).</summary>
public sealed class SigmoidGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Sigmoid"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) =>
        context.Mul(dy, context.Mul(y, context.Sub(context.Scalar(1.0, y), y)));
}

/// <summary>Y = max(X, 0): dX = dY where X &gt; 0, else 0.</summary>
public sealed class ReluGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Relu"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) =>
        context.Op("Where", [context.Op("Greater", [x, context.Scalar(0.0, x)]), dy, context.Scalar(0.0, dy)]);
}

/// <summary>Identity (also a stop-gradient-free pass-through): dX = dY.</summary>
public sealed class IdentityGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Identity"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy) => dy;
}

/// <summary>Y = Cast(X): dX = Cast(dY) back to the element type of X.</summary>
public sealed class CastGradient : UnaryGradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Cast", "CastLike"];

    /// <inheritdoc />
    protected override Value InputGradient(GradientContext context, Value x, Value y, Value dy)
    {
        DataType to = context.TypeOf(x);
        if (to == DataType.Undefined)
        {
            throw new LoraException($"The element type of '{x.Name}' (input of a Cast) is unknown; its gradient cannot be cast back.");
        }

        return context.Op("Cast", [dy], Attr.Int("to", (long)to));
    }
}

/// <summary>
/// Y = Dropout(X, ratio, training_mode). In inference mode Y = X. In training mode the node's mask output is used:
/// dX = dY · mask / (1 − ratio). The mask output is added to the node when the model did not ask for it.
/// </summary>
public sealed class DropoutGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Dropout"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Value dy = step.OutputGradient(0)!;
        Value? training = step.OptionalInput(2);
        bool trainingOff = training is null || (training.Initializer is { DataType: DataType.Bool } t && t.GetBytes().Span[0] == 0);
        if (trainingOff)
        {
            step.SetInputGradient(0, dy);
            return;
        }

        if (step.Node.Outputs.Count < 2 || step.Node.Outputs[1].Name.Length == 0)
        {
            throw new LoraException($"Dropout node '{step.Node.Name}' may run in training mode but does not output its mask; the mask is needed for the gradient.");
        }

        Value mask = context.Op("Cast", [step.Output(1)], Attr.Int("to", (long)context.TypeOf(dy)));
        Value ratio = step.OptionalInput(1) is { } r ? context.CastLike(r, dy) : context.Scalar(0.5, dy);
        Value scale = context.Div(context.Scalar(1.0, dy), context.Sub(context.Scalar(1.0, dy), ratio));
        if (training!.Initializer is null)
        {
            // Run-time mode switch: in inference mode the mask is all true and no rescaling happened.
            scale = context.Op("Where", [training, scale, context.Scalar(1.0, dy)]);
        }

        step.SetInputGradient(0, context.Mul(context.Mul(dy, mask), scale));
    }
}
