using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Single-input elementwise ops: the op table entries (shape of the input; dX from X, Y and dY), the rounding and
/// test ops gradients do not flow through, and those whose VJP is not written yet.
/// </summary>
internal static class UnaryOps
{
    /// <summary>The entries.</summary>
    public static OpEntry[] Entries =>
    [
        // Y = -X: dX = -dY.
        Op.Unary("Neg", (c, x, y, dy) => c.Neg(dy)),
        // Y = √X: dX = dY / (2Y).
        Op.Unary("Sqrt", (c, x, y, dy) => c.Div(dy, c.Mul(y, c.Scalar(2.0, y)))),
        // Y = 1/X: dX = -dY · Y².
        Op.Unary("Reciprocal", (c, x, y, dy) => c.Neg(c.Mul(dy, c.Mul(y, y)))),
        // Y = eˣ: dX = dY · Y.
        Op.Unary("Exp", (c, x, y, dy) => c.Mul(dy, y)),
        // Y = ln X: dX = dY / X.
        Op.Unary("Log", (c, x, y, dy) => c.Div(dy, x)),
        // Y = tanh X: dX = dY · (1 - Y²).
        Op.Unary("Tanh", (c, x, y, dy) => c.Mul(dy, c.Sub(c.Scalar(1.0, y), c.Mul(y, y)))),
        // Y = erf X: dX = dY · 2/√π · e^(−X²).
        Op.Unary("Erf", (c, x, y, dy) => c.Mul(dy, c.Mul(c.Op("Exp", [c.Neg(c.Mul(x, x))]), c.Scalar(2.0 / Math.Sqrt(Math.PI), x)))),
        // Y = ln(1 + eˣ): dX = dY · σ(X).
        Op.Unary("Softplus", (c, x, y, dy) => c.Mul(dy, c.Op("Sigmoid", [x]))),
        // Y = σ(X): dX = dY · Y · (1 − Y).
        Op.Unary("Sigmoid", (c, x, y, dy) => c.Mul(dy, c.Mul(y, c.Sub(c.Scalar(1.0, y), y)))),
        // Y = max(X, 0): dX = dY where X > 0, else 0.
        Op.Unary("Relu", (c, x, y, dy) => c.Op("Where", [c.Op("Greater", [x, c.Scalar(0.0, x)]), dy, c.Scalar(0.0, dy)])),
        // Y = X (a stop-gradient Identity is cut before its entry is asked): dX = dY.
        Op.Unary("Identity", (c, x, y, dy) => dy),
        // Y = Cast(X) or CastLike(X, template): dX = dY cast back to the element type of X.
        Op.Unary("Cast", CastBack) with { Type = Types.CastTo },
        Op.Unary("CastLike", CastBack, 1) with { Type = Types.OfInput(1) },
        Op.Grad("Dropout", Shapes.SameAsInput, DropoutGradient.Backward, 2) with { Type = Types.FromOutput(1, DataType.Bool) },

        Op.Cut("Floor", Shapes.SameAsInput),
        Op.Cut("Ceil", Shapes.SameAsInput),
        Op.Cut("Round", Shapes.SameAsInput),
        Op.Cut("Sign", Shapes.SameAsInput),
        Op.Cut("IsNaN", Shapes.SameAsInput, Types.Bool),
        Op.Cut("IsInf", Shapes.SameAsInput, Types.Bool),
        Op.Cut("Not", Shapes.SameAsInput, Types.Bool),

        Op.NoVjp(string.Empty, "Abs", Shapes.SameAsInput),
        Op.NoVjp(string.Empty, "Sin", Shapes.SameAsInput),
        Op.NoVjp(string.Empty, "Cos", Shapes.SameAsInput),
        Op.NoVjp(string.Empty, "Clip", Shapes.SameAsInput),
        Op.NoVjp(string.Empty, "LeakyRelu", Shapes.SameAsInput),
        Op.NoVjp(string.Empty, "HardSigmoid", Shapes.SameAsInput),
        Op.NoVjp("com.microsoft", "QuickGelu", Shapes.SameAsInput),
    ];

    private static Value CastBack(GradientContext context, Value x, Value y, Value dy)
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
internal static class DropoutGradient
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
