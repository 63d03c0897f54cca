using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Broadcasting elementwise ops: their op table entries (numpy broadcast shapes; each input's gradient summed back
/// down to its shape with <see cref="GradientContext.Unbroadcast"/>), and the comparisons and logic ops gradients do
/// not flow through.
/// </summary>
internal static class ElementwiseOps
{
    /// <summary>The entries.</summary>
    public static OpEntry[] Entries =>
    [
        // Y = A + B: dA = dY, dB = dY.
        Op.Grad("Add", Shapes.Broadcast, (c, s) => Binary(c, s, (g, a, b) => g, (g, a, b) => g)),
        // Y = A - B: dA = dY, dB = -dY.
        Op.Grad("Sub", Shapes.Broadcast, (c, s) => Binary(c, s, (g, a, b) => g, (g, a, b) => c.Neg(g))),
        // Y = A · B: dA = dY · B, dB = dY · A.
        Op.Grad("Mul", Shapes.Broadcast, (c, s) => Binary(c, s, (g, a, b) => c.Mul(g, b), (g, a, b) => c.Mul(g, a))),
        Op.Grad("Div", Shapes.Broadcast, DivBackward),
        Op.Grad("Pow", Shapes.Broadcast, PowBackward),
        Op.Grad("Where", Shapes.Broadcast, WhereBackward, 0) with { Type = Types.OfInput(1) },
        Op.NoVjp(string.Empty, "Max", Shapes.Broadcast),
        Op.NoVjp(string.Empty, "Min", Shapes.Broadcast),

        Op.Cut("Equal", Shapes.Broadcast, Types.Bool),
        Op.Cut("Less", Shapes.Broadcast, Types.Bool),
        Op.Cut("Greater", Shapes.Broadcast, Types.Bool),
        Op.Cut("LessOrEqual", Shapes.Broadcast, Types.Bool),
        Op.Cut("GreaterOrEqual", Shapes.Broadcast, Types.Bool),
        Op.Cut("And", Shapes.Broadcast, Types.Bool),
        Op.Cut("Or", Shapes.Broadcast, Types.Bool),
        Op.Cut("Xor", Shapes.Broadcast, Types.Bool),
    ];

    /// <summary>Sets dA = unbroadcast(<paramref name="da"/>(dY, A, B)) and dB likewise, each only where needed.</summary>
    private static void Binary(GradientContext context, BackwardStep step, Func<Value, Value, Value, Value> da, Func<Value, Value, Value, Value> db)
    {
        Value g = step.OutputGradient(0)!;
        Value a = step.Input(0);
        Value b = step.Input(1);
        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Unbroadcast(da(g, a, b), a, step.Output(0)));
        }

        if (step.NeedsGradient(1))
        {
            step.SetInputGradient(1, context.Unbroadcast(db(g, a, b), b, step.Output(0)));
        }
    }

    /// <summary>Y = A / B: dA = unbroadcast(dY / B), dB = unbroadcast(-dY · Y / B); dY / B is shared.</summary>
    private static void DivBackward(GradientContext context, BackwardStep step)
    {
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

    /// <summary>Y = A ^ B: dA = dY · B · A^(B-1) (dY · 2A for B = 2), dB = dY · Y · ln A.</summary>
    private static void PowBackward(GradientContext context, BackwardStep step)
    {
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

    /// <summary>Z = Where(C, X, Y): dX = Where(C, dZ, 0), dY = Where(C, 0, dZ), each unbroadcast; C gets none.</summary>
    private static void WhereBackward(GradientContext context, BackwardStep step)
    {
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
