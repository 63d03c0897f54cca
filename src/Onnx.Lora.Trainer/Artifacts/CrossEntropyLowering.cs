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
            Value? ignore = node.GetAttribute("ignore_index")?.AsInt() is { } ig ? b.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [ig])) : null;
            Value zeroId = b.Initializer(InMemoryTensor.FromInt64s("zero", [], [0]));
            Value? zero = ignore is null ? null : b.Op("Cast", [zeroId], [Attr.Int("to", (long)ScoreType(node))]);
            CrossEntropyTerms terms = SumOverRows(b, node.Inputs[0]!, node.Inputs[1]!, ignore, zeroId, zero, b.Int64s("axis_one", 1), opset);
            node.Outputs[0].ReplaceAllUsesWith(terms.Sum);
            graph.Remove(node);
        }

        return losses.Length;
    }

    /// <summary>
    /// Σ (ReduceLogSumExp(scores) − GatherElements(scores, label)) over the rows of [N, V] <paramref name="scores"/> whose
    /// label is not <paramref name="ignoreIndex"/>, with the pieces the fused head's gradient reuses.
    /// </summary>
    /// <param name="b">Where the ops go.</param>
    /// <param name="scores">Scores [N, V].</param>
    /// <param name="labels">Labels [N].</param>
    /// <param name="ignoreIndex">The ignored label (int64 scalar), or null.</param>
    /// <param name="zeroId">Int64 scalar 0: the label an ignored row gathers (its own may be out of range).</param>
    /// <param name="zero">A zero of the scores' type for an ignored row's term; needed with <paramref name="ignoreIndex"/>.</param>
    /// <param name="axis1">Int64 [1] holding 1.</param>
    /// <param name="opset">The model's default opset (ReduceLogSumExp takes its axes as an input from 18).</param>
    internal static CrossEntropyTerms SumOverRows(GraphBuilder b, Value scores, Value labels, Value? ignoreIndex, Value zeroId, Value? zero, Value axis1, long opset)
    {
        Value? isIgnored = ignoreIndex is null ? null : b.Op("Equal", [labels, ignoreIndex]);
        Value? ignored = isIgnored is null ? null : b.Op("Unsqueeze", [isIgnored, axis1]);
        Value at = b.Op("Unsqueeze", [isIgnored is null ? labels : b.Op("Where", [isIgnored, zeroId, labels]), axis1]);
        Value logSumExp = opset >= 18
            ? b.Op("ReduceLogSumExp", [scores, axis1], [Attr.Int("keepdims", 1)])
            : b.Op("ReduceLogSumExp", [scores], [Attr.Ints("axes", [1]), Attr.Int("keepdims", 1)]);
        Value picked = b.Op("GatherElements", [scores, at], [Attr.Int("axis", 1)]);
        Value perRow = b.Op("Sub", [logSumExp, picked]);
        if (ignored is not null)
        {
            // Where, not a multiply by the mask: an ignored row's label may be out of range, its term is exactly 0.
            perRow = b.Op("Where", [ignored, zero ?? throw new ArgumentNullException(nameof(zero)), perRow]);
        }

        return new CrossEntropyTerms(b.Op("ReduceSum", [perRow], [Attr.Int("keepdims", 0)]), at, ignored, logSumExp, picked);
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

/// <summary>What <see cref="CrossEntropyLowering.SumOverRows"/> builds: the sum, the gathered label index [N, 1], the ignored rows [N, 1] (or null), log-sum-exp and the label's score [N, 1].</summary>
internal sealed record CrossEntropyTerms(Value Sum, Value At, Value? Ignored, Value LogSumExp, Value Picked);
