using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>Softmax axis handling shared by Softmax and LogSoftmax.</summary>
internal static class SoftmaxAxis
{
    /// <summary>
    /// The reduction axis. Before opset 13 Softmax flattened the input to 2-D at <c>axis</c> (default 1); that equals
    /// the per-axis form only when the axis is the last one, so other cases are refused.
    /// </summary>
    public static long Of(GradientContext context, Node node, Value x)
    {
        if (context.Opset >= 13)
        {
            return node.GetInt("axis", -1);
        }

        long axis = node.GetInt("axis", 1);
        int? rank = context.RankOf(x);
        if (axis == -1 || (rank is not null && axis == rank - 1))
        {
            return -1;
        }

        throw new LoraException($"{node.OpType} node '{node.Name}' (opset {context.Opset}) flattens at axis {axis}; only the last axis is supported for its gradient.");
    }
}

/// <summary>Y = softmax(X): dX = Y · (dY − Σ_axis dY·Y).</summary>
public sealed class SoftmaxGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Softmax"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        long axis = SoftmaxAxis.Of(context, step.Node, step.Input(0));
        Value y = step.Output(0);
        Value dy = step.OutputGradient(0)!;
        Value dot = context.ReduceSum(context.Mul(dy, y), [axis], keepDims: true);
        step.SetInputGradient(0, context.Mul(y, context.Sub(dy, dot)));
    }
}

/// <summary>Y = log softmax(X): dX = dY − e^Y · Σ_axis dY.</summary>
public sealed class LogSoftmaxGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["LogSoftmax"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        if (!step.NeedsGradient(0))
        {
            return;
        }

        long axis = SoftmaxAxis.Of(context, step.Node, step.Input(0));
        Value dy = step.OutputGradient(0)!;
        Value sum = context.ReduceSum(dy, [axis], keepDims: true);
        Value p = context.Op("Exp", [step.Output(0)]);
        step.SetInputGradient(0, context.Sub(dy, context.Mul(p, sum)));
    }
}
