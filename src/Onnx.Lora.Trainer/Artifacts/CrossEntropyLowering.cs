using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Replaces the forward SoftmaxCrossEntropyLoss of the loss heads, once the backward is built, by ops that hold no
/// [N, V] buffer: Σ (ReduceLogSumExp(scores) − GatherElements(scores, label)) over the counted rows.
/// </summary>
/// <remarks>
/// ONNX Runtime has no kernel for SoftmaxCrossEntropyLoss and runs its ONNX function body: the scores reshaped to
/// [N, V, 1], transposed, a LogSoftmax, transposed back; with the logits that is four [N, V] float buffers alive at once
/// (its profiler, BENCHMARKS.md: +576 MiB at 1024 tokens × 49,152). The lowered loss computes the same sum (the same
/// max-shifted log-sum-exp) from the logits alone. The backward is untouched: the SoftmaxCrossEntropyLoss rule already
/// reads only the scores and labels (softmax, then the label entries minus one, then the scale).
/// Only nodes the heads mark (<see cref="Marker"/>: 2-D scores, labels [N], reduction sum, no class weights) are lowered.
/// </remarks>
public static class CrossEntropyLowering
{
    /// <summary>Metadata key the loss heads put on the SoftmaxCrossEntropyLoss nodes this pass may lower.</summary>
    public const string Marker = "onnx_lora.cross_entropy_rows";

    /// <summary>Lowers every marked SoftmaxCrossEntropyLoss of <paramref name="model"/>'s main graph whose log_prob output nothing reads.</summary>
    /// <returns>How many nodes were lowered.</returns>
    public static int Apply(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        long opset = model.DefaultOpset;
        Node[] losses = [.. graph.Nodes.Where(n => n.Is("SoftmaxCrossEntropyLoss") && n.MetadataProps.Any(p => p.Key == Marker)
            && (n.Outputs.Count < 2 || (n.Outputs[1].Uses.Count == 0 && !n.Outputs[1].IsGraphOutput)) && !n.Outputs[0].IsGraphOutput)];
        foreach (Node node in losses)
        {
            var b = new GraphBuilder(model) { InsertionPoint = node, NamePrefix = "cross_entropy/" };
            Value scores = node.Inputs[0]!;
            Value labels = node.Inputs[1]!;
            Value axis = b.Int64s("axis_one", 1);
            Value? ignored = node.GetAttribute("ignore_index")?.AsInt() is { } ignore
                ? b.Op("Equal", [labels, b.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [ignore]))])
                : null;
            Value zeroId = b.Initializer(InMemoryTensor.FromInt64s("zero", [], [0]));
            Value safe = ignored is null ? labels : b.Op("Where", [ignored, zeroId, labels]);
            Value picked = b.Op("GatherElements", [scores, b.Op("Unsqueeze", [safe, axis])], [Attr.Int("axis", 1)]);
            Value logSumExp = opset >= 18
                ? b.Op("ReduceLogSumExp", [scores, axis], [Attr.Int("keepdims", 1)])
                : b.Op("ReduceLogSumExp", [scores], [Attr.Ints("axes", [1]), Attr.Int("keepdims", 1)]);
            Value perRow = b.Op("Sub", [logSumExp, picked]);
            if (ignored is not null)
            {
                // Where, not a multiply by the mask: an ignored row's label may be out of range, its term is exactly 0.
                Value zero = b.Op("Cast", [zeroId], [Attr.Int("to", (long)ScoreType(node))]);
                perRow = b.Op("Where", [b.Op("Unsqueeze", [ignored, axis]), zero, perRow]);
            }

            Value sum = b.Op("ReduceSum", [perRow], [Attr.Int("keepdims", 0)]);
            node.Outputs[0].ReplaceAllUsesWith(sum);
            graph.Remove(node);
        }

        return losses.Length;
    }

    /// <summary>Marks <paramref name="node"/> (scores [N, C] of <paramref name="scoreType"/>, labels [N], reduction sum, no weights) for lowering.</summary>
    public static void Mark(Node node, DataType scoreType)
    {
        ArgumentNullException.ThrowIfNull(node);
        DataType type = scoreType == DataType.Undefined ? DataType.Float : scoreType;
        node.MetadataProps.Add(KeyValuePair.Create(Marker, ((int)type).ToString(System.Globalization.CultureInfo.InvariantCulture)));
    }

    /// <summary>True for a SoftmaxCrossEntropyLoss the heads marked, over float scores.</summary>
    public static bool IsMarkedFloat(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return node.Is("SoftmaxCrossEntropyLoss") && node.MetadataProps.Any(p => p.Key == Marker) && ScoreType(node) == DataType.Float;
    }

    private static DataType ScoreType(Node node) =>
        (DataType)int.Parse(node.MetadataProps.First(p => p.Key == Marker).Value, System.Globalization.CultureInfo.InvariantCulture);
}
