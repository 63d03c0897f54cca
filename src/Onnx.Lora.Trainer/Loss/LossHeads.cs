using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Loss;

/// <summary>The scalar loss a head appended, and the count of tokens (or samples) it averages over.</summary>
/// <param name="Loss">Scalar float32 loss.</param>
/// <param name="TokenCount">Scalar float32 count of counted tokens or samples.</param>
public sealed record LossOutputs(Value Loss, Value TokenCount);

/// <summary>Appends a loss to a model's graph, reading one model output and adding the label inputs it needs.</summary>
public interface ILossHead
{
    /// <summary>Names of the graph inputs the head adds (labels / targets).</summary>
    IReadOnlyList<string> LabelInputs { get; }

    /// <summary>Appends the loss computed from <paramref name="prediction"/>.</summary>
    LossOutputs Attach(GraphBuilder builder, Value prediction);
}

/// <summary>
/// Causal language modelling: mean cross-entropy of logits[:, t] against labels[:, t+1] over the tokens whose label is
/// not <see cref="IgnoreIndex"/> (−100, as Hugging Face uses for padding and prompt tokens). Labels are an int64 input
/// [batch, sequence] aligned with input_ids (the shift happens here). Outputs the mean and the counted tokens.
/// </summary>
/// <remarks>
/// NOTE: the shift moves the labels, not the logits: labels[:, 1:] gain an ignored last column, so every logit row is
/// scored and the last one counts for nothing. The same loss and gradients as slicing logits[:, :-1], without a sliced
/// [batch·sequence, vocab] copy in the forward pass and its zero-padded gradient in the backward pass (each 100–150 MiB
/// at 0.1–0.5B vocabularies).
/// </remarks>
public sealed class CausalLmLoss : ILossHead
{
    /// <summary>Label value that is not counted.</summary>
    public const long IgnoreIndex = -100;

    /// <summary>Name of the labels input.</summary>
    public string LabelsInput { get; init; } = "labels";

    /// <inheritdoc />
    public IReadOnlyList<string> LabelInputs => [LabelsInput];

    /// <inheritdoc />
    public LossOutputs Attach(GraphBuilder builder, Value prediction)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(prediction);
        Value labels = builder.Input(LabelsInput, DataType.Int64, "batch", "sequence");
        Value logits = LossMath.AsFloat(builder, prediction);
        Value vocab = builder.Op("Slice", [builder.Op("Shape", [logits]), builder.Int64s("vocab_start", 2), builder.Int64s("vocab_end", 3)]);
        Value scores = builder.Op("Reshape", [logits, builder.Op("Concat", [builder.Int64s("minus_one", -1), vocab], [Attr.Int("axis", 0)])]);
        Value nextLabels = builder.Op("Slice", [labels, builder.Int64s("label_start", 1), builder.Int64s("label_end", long.MaxValue), builder.Int64s("label_axis", 1)]);
        Value lastColumn = builder.Op("Concat", [builder.Op("Slice", [builder.Op("Shape", [labels]), builder.Int64s("batch_start", 0), builder.Int64s("batch_end", 1)]), builder.Int64s("one_column", 1)], [Attr.Int("axis", 0)]);
        Value ignored = builder.Op("ConstantOfShape", [lastColumn], [Attr.Tensor("value", InMemoryTensor.FromInt64s("ignored_label", [1], [IgnoreIndex]))]);
        Value shiftedLabels = builder.Op("Concat", [nextLabels, ignored], [Attr.Int("axis", 1)]);
        Value flatLabels = builder.Op("Reshape", [shiftedLabels, builder.Int64s("flat", -1)]);
        return LossMath.MeanCrossEntropy(builder, scores, flatLabels, IgnoreIndex, logits.ElementType);
    }
}

/// <summary>
/// Sequence classification: mean cross-entropy of logits [batch, classes] against int64 labels [batch]
/// (−100 skips a sample). The count output is the number of counted samples. As an evaluation metric it counts the
/// samples whose arg-max class is the label (<see cref="AccuracyMetric"/>).
/// </summary>
public sealed class SequenceClassificationLoss : ILossHead, IEvaluationMetricHead
{
    /// <summary>Name of the evaluation output counting correctly classified samples.</summary>
    public const string AccuracyMetric = "accuracy";

    /// <summary>Name of the labels input.</summary>
    public string LabelsInput { get; init; } = "labels";

    /// <summary>
    /// When set, labels arrive as [batch, sequence] rows (the trainer's row layout, see
    /// <see cref="Data.ClassificationDataset"/>) and the class id is read from this column; null for labels [batch].
    /// </summary>
    public int? LabelColumn { get; init; }

    /// <inheritdoc />
    public IReadOnlyList<string> LabelInputs => [LabelsInput];

    /// <inheritdoc />
    public IReadOnlyList<string> MetricOutputs => [AccuracyMetric];

    /// <inheritdoc />
    public LossOutputs Attach(GraphBuilder builder, Value prediction)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(prediction);
        Value labels = ClassLabels(builder, builder.Input(LabelsInput, DataType.Int64, LabelColumn is null ? ["batch"] : ["batch", "sequence"]));
        Value scores = LossMath.AsFloat(builder, prediction);
        return LossMath.MeanCrossEntropy(builder, scores, labels, CausalLmLoss.IgnoreIndex, scores.ElementType);
    }

    /// <inheritdoc />
    public IReadOnlyList<Value> AttachMetrics(GraphBuilder builder, Value prediction)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(prediction);
        Value input = builder.Graph.Inputs.FirstOrDefault(i => i.Name == LabelsInput)
            ?? throw new InvalidOperationException($"Attach the loss before its metrics: the graph has no '{LabelsInput}' input.");
        Value labels = ClassLabels(builder, input);
        Value predicted = builder.Op("ArgMax", [prediction], [Attr.Int("axis", -1), Attr.Int("keepdims", 0)]);
        Value counted = builder.Op("Not", [builder.Op("Equal", [labels, builder.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [CausalLmLoss.IgnoreIndex]))])]);
        Value correct = builder.Op("And", [builder.Op("Equal", [predicted, labels]), counted]);
        return [builder.Op("ReduceSum", [builder.Cast(correct, DataType.Float)], [Attr.Int("keepdims", 0)])];
    }

    private Value ClassLabels(GraphBuilder builder, Value labels) => LabelColumn is int column
        ? builder.Op("Gather", [labels, builder.Initializer(InMemoryTensor.FromInt64s("label_column", [], [column]))], [Attr.Int("axis", 1)])
        : labels;
}

/// <summary>
/// A loss head that also reports evaluation metrics: scalar float32 sums over the batch's counted samples (correct
/// predictions, say), which the trainer adds up over the eval set and divides by the counted samples.
/// </summary>
public interface IEvaluationMetricHead
{
    /// <summary>Names of the metric outputs, in the order <see cref="AttachMetrics"/> returns them.</summary>
    IReadOnlyList<string> MetricOutputs { get; }

    /// <summary>Appends the metric sums; called after <see cref="ILossHead.Attach"/> on the same graph.</summary>
    IReadOnlyList<Value> AttachMetrics(GraphBuilder builder, Value prediction);
}

internal static class LossMath
{
    /// <summary>Half-precision predictions are lifted to float32 for the loss; float32 and float64 stay as they are.</summary>
    public static Value AsFloat(GraphBuilder builder, Value v) =>
        v.ElementType is DataType.Float16 or DataType.BFloat16 ? builder.Cast(v, DataType.Float) : v;

    /// <summary>Σ CE / max(count, 1) with SoftmaxCrossEntropyLoss(reduction = sum, ignore_index).</summary>
    public static LossOutputs MeanCrossEntropy(GraphBuilder builder, Value scores, Value labels, long ignoreIndex, DataType scoreType)
    {
        Value sum = builder.Op("SoftmaxCrossEntropyLoss", [scores, labels], [Attr.String("reduction", "sum"), Attr.Int("ignore_index", ignoreIndex)]);
        Artifacts.CrossEntropyLowering.Mark(sum.Producer!, scoreType);
        Value counted = builder.Op("Not", [builder.Op("Equal", [labels, builder.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [ignoreIndex]))])]);
        Value count = builder.Op("ReduceSum", [builder.Cast(counted, DataType.Float)], [Attr.Int("keepdims", 0)]);
        Value denominator = builder.Op("Max", [count, builder.Scalar("one", 1f)]);
        if (scoreType == DataType.Double)
        {
            denominator = builder.Cast(denominator, DataType.Double);
        }

        Value loss = builder.Div(sum, denominator);
        return new LossOutputs(loss, count);
    }
}
