using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>Loss ops: SoftmaxCrossEntropyLoss (its labels get no gradient).</summary>
internal static class LossOps
{
    /// <summary>The entries.</summary>
    public static OpEntry[] Entries =>
    [
        Op.Grad("SoftmaxCrossEntropyLoss", Shapes.SoftmaxCrossEntropyLoss, SoftmaxCrossEntropyLossGradient.Backward, 1),

        // (Σ loss, ∂Σ loss/∂h) = LinearCrossEntropy(h, W frozen, labels): the forward computed the gradient; dh = output 1 · d loss.
        Op.Grad(Artifacts.LinearCrossEntropy.Domain, Artifacts.LinearCrossEntropy.OpType, Shapes.LinearCrossEntropy, LinearCrossEntropyGradient, 1, 2),
    ];

    private static void LinearCrossEntropyGradient(GradientContext context, BackwardStep step)
    {
        if (step.OutputGradient(1) is not null)
        {
            throw new LoraException($"Node '{step.Node.Name}': the gradient output of {Artifacts.LinearCrossEntropy.OpType} is not differentiable.");
        }

        if (step.NeedsGradient(0) && step.OutputGradient(0) is { } dloss)
        {
            step.SetInputGradient(0, context.Mul(step.Output(1), dloss));
        }
    }
}

/// <summary>
/// SoftmaxCrossEntropyLoss(scores [N, C, d…], labels [N, d…], weights? [C]; reduction, ignore_index).
/// Per sample ℓₙ = −wₙ·log softmax(scores)ₙ[labelₙ] with wₙ = weights[labelₙ]·[labelₙ ≠ ignore_index];
/// d scores = (softmax(scores) − onehot(label)) · wₙ · c, where c = dℓ (none), d loss (sum), d loss / Σwₙ (mean).
/// The optional log_prob output adds its own LogSoftmax gradient.
/// </summary>
internal static class SoftmaxCrossEntropyLossGradient
{
    /// <summary>The VJP.</summary>
    public static void Backward(GradientContext context, BackwardStep step)
    {
        if (!step.NeedsGradient(0))
        {
            return;
        }

        Node node = step.Node;
        Value scores = step.Input(0);
        Value labels = step.Input(1);
        Value? weights = step.OptionalInput(2);
        string reduction = node.GetAttribute("reduction")?.AsString() ?? "mean";
        long? ignore = node.GetAttribute("ignore_index")?.AsInt();
        var terms = new List<Value>();
        if (step.OutputGradient(0) is { } dloss)
        {
            Value safeLabels = labels;
            Value? keep = null;
            if (ignore is { } ig)
            {
                DataType labelType = context.TypeOf(labels) == DataType.Int32 ? DataType.Int32 : DataType.Int64;
                Value ignoreValue = context.Scalar(ig, labelType);
                Value isIgnored = context.Op("Equal", [labels, ignoreValue]);
                keep = context.Op("Cast", [context.Op("Not", [isIgnored])], Attr.Int("to", (long)TypeOr(context, scores)));
                safeLabels = context.Op("Where", [isIgnored, context.Scalar(0, labelType), labels]);
            }

            Value w = weights is null
                ? keep ?? context.Op("Cast", [context.Op("ConstantOfShape", [context.ShapeOfValue(labels)])], Attr.Int("to", (long)TypeOr(context, scores)))
                : keep is null ? context.Op("Gather", [weights, safeLabels]) : context.Mul(context.Op("Gather", [weights, safeLabels]), keep);
            if (weights is null && keep is null)
            {
                // ConstantOfShape defaults to float zeros; the weight of every sample is one.
                w = context.Add(w, context.Scalar(1.0, scores));
            }

            Value coefficient = reduction switch
            {
                "none" => context.Mul(w, dloss),
                "sum" => context.Mul(w, dloss),
                "mean" => context.Mul(w, context.Div(dloss, context.ReduceSum(w, [], keepDims: false))),
                _ => throw new LoraException($"SoftmaxCrossEntropyLoss '{node.Name}' has unknown reduction '{reduction}'."),
            };

            // softmax − onehot without a one-hot [N, C] tensor or a second [N, C] result: the label entries, gathered
            // from p (one per sample), minus one are written back over p. (p[label] − 1 is what p − onehot computes there.)
            Value p = context.Op("Softmax", [scores], Attr.Int("axis", 1));
            Value at = context.Unsqueeze(safeLabels, [1]);
            Value atLabel = context.Sub(context.Op("GatherElements", [p, at], Attr.Int("axis", 1)), context.Scalar(1.0, scores));
            Value pMinusOnehot = context.Op("ScatterElements", [p, at, atLabel], Attr.Int("axis", 1));
            terms.Add(context.Mul(pMinusOnehot, context.Unsqueeze(coefficient, [1])));
        }

        if (step.OutputGradient(1) is { } dlogp)
        {
            Value sum = context.ReduceSum(dlogp, [1], keepDims: true);
            Value p = context.Op("Exp", [step.Output(1)]);
            terms.Add(context.Sub(dlogp, context.Mul(p, sum)));
        }

        step.SetInputGradient(0, context.Sum(terms));
    }

    private static DataType TypeOr(GradientContext context, Value v)
    {
        DataType t = context.TypeOf(v);
        return t == DataType.Undefined ? DataType.Float : t;
    }
}
