using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Raises the default-domain opset of a model to the one the loss heads and the backward graph are written for (13:
/// SoftmaxCrossEntropyLoss needs 12, run-time broadcast undoing needs ReduceSum with axes as an input). Older exports
/// (e.g. ORT's transformers optimizer at opset 11 for GPT-2) mostly hold ops whose semantics did not change between
/// their opset and 13; only then is the version number raised. A model holding an op that did change (Squeeze,
/// Softmax, Split, ...) is refused with a clear error rather than silently reinterpreted.
/// </summary>
public static class OpsetUpgrade
{
    /// <summary>The default-domain opset the training graph is built at, at least.</summary>
    public const long TrainingOpset = 13;

    // NOTE: ops whose schema (inputs, attributes, semantics) is the same from opset 11 to 13 for every type the
    // transformer exports use; the new versions only added types (bfloat16) or tightened the docs.
    private static readonly HashSet<string> s_stableFrom11 =
    [
        "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Cast", "Reshape", "Transpose", "Gather", "Concat", "Shape", "Identity",
        "Neg", "Sqrt", "Pow", "Exp", "Log", "Tanh", "Erf", "Sigmoid", "Relu", "Reciprocal", "Where", "Equal", "Less", "Greater",
        "Not", "And", "Or", "Slice", "Range", "ConstantOfShape", "Constant", "Expand", "Tile", "Sum", "Max", "Min", "Abs",
        "ReduceMean", "ReduceMax", "GatherElements", "Size", "Flatten", "Floor", "Ceil",
    ];

    /// <summary>Raises the default opset of <paramref name="model"/> to <see cref="TrainingOpset"/> when it is 11 or 12.</summary>
    /// <returns>True when the opset was raised.</returns>
    /// <exception cref="GraphValidationException">The opset is older than 11, or a node's op changed meaning up to 13.</exception>
    public static bool Apply(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        long opset = model.DefaultOpset;
        if (opset >= TrainingOpset)
        {
            return false;
        }

        if (opset < 11)
        {
            throw new GraphValidationException($"Model graph '{model.Graph.Name}' uses opset {opset}; training needs opset 11 or newer (convert the model first).");
        }

        Node? changed = model.Graph.AllNodes().FirstOrDefault(n => (n.Domain.Length == 0 || n.Domain == "ai.onnx") && !s_stableFrom11.Contains(n.OpType));
        if (changed is not null)
        {
            throw new GraphValidationException(
                $"Model graph '{model.Graph.Name}' uses opset {opset}, and training needs {TrainingOpset}; node '{changed.Name}' ({changed.OpType}) changed meaning between them. Convert the model to opset {TrainingOpset} first.");
        }

        model.OpsetImports[string.Empty] = TrainingOpset;
        if (model.IrVersion < 7)
        {
            model.IrVersion = 7;
        }

        return true;
    }
}
