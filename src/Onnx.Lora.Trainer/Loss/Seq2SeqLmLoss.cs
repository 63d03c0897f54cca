using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Loss;

/// <summary>
/// Encoder-decoder language modelling with teacher forcing, as Hugging Face's <c>*ForConditionalGeneration</c> computes
/// it from <c>labels</c>: the decoder reads the labels shifted one step right behind the decoder start token (−100
/// replaced by the pad id), and the loss is the mean cross-entropy of logits[:, t] against labels[:, t] — no shift in
/// the loss — over the positions whose label is not −100.
/// </summary>
/// <remarks>
/// NOTE: the shift is built into the training graph, in front of everything else, so the run feeds labels only and
/// the decoder's input can never disagree with them (HF's <c>shift_tokens_right</c>).
/// </remarks>
/// <param name="decoderStartTokenId">The decoder's first input token (config.json <c>decoder_start_token_id</c>).</param>
/// <param name="padTokenId">The id the decoder reads where a label is −100 (config.json <c>pad_token_id</c>).</param>
public sealed class Seq2SeqLmLoss(long decoderStartTokenId, long padTokenId) : ILossHead
{
    /// <summary>The joined graph's input that the decoder reads its token ids from.</summary>
    public const string DecoderInputIds = "decoder_input_ids";

    /// <summary>Name of the labels input.</summary>
    public string LabelsInput { get; init; } = "labels";

    /// <summary>The decoder's first input token.</summary>
    public long DecoderStartTokenId => decoderStartTokenId;

    /// <summary>The id read in place of −100.</summary>
    public long PadTokenId => padTokenId;

    /// <inheritdoc />
    public IReadOnlyList<string> LabelInputs => [LabelsInput];

    /// <inheritdoc />
    /// <exception cref="GraphValidationException">The graph has no <see cref="DecoderInputIds"/> input.</exception>
    public LossOutputs Attach(GraphBuilder builder, Value prediction)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(prediction);
        Graph graph = builder.Graph;
        Value decoderIds = graph.Inputs.FirstOrDefault(v => v.Name == DecoderInputIds)
            ?? throw new GraphValidationException($"The encoder-decoder graph has no '{DecoderInputIds}' input for the labels to feed.");
        Value labels = builder.Input(LabelsInput, DataType.Int64, "batch", "sequence");

        // The decoder's input is computed before any node that reads it: the new nodes go to the front.
        Node? first = graph.Nodes.Count > 0 ? graph.Nodes[0] : null;
        builder.InsertionPoint = first;
        Value rows = builder.Op("Slice", [builder.Op("Shape", [labels]), builder.Int64s("rows_start", 0), builder.Int64s("rows_end", 1)]);
        Value startColumn = builder.Op("ConstantOfShape", [builder.Op("Concat", [rows, builder.Int64s("one_column", 1)], [Attr.Int("axis", 0)])],
            [Attr.Tensor("value", InMemoryTensor.FromInt64s("decoder_start", [1], [decoderStartTokenId]))]);
        Value previous = builder.Op("Slice", [labels, builder.Int64s("previous_start", 0), builder.Int64s("previous_end", -1), builder.Int64s("previous_axis", 1)]);
        Value shifted = builder.Op("Concat", [startColumn, previous], [Attr.Int("axis", 1)]);
        Value ignored = builder.Op("Equal", [shifted, builder.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [CausalLmLoss.IgnoreIndex]))]);
        Value fed = builder.Op("Where", [ignored, builder.Initializer(InMemoryTensor.FromInt64s("pad_id", [], [padTokenId])), shifted]);
        if (decoderIds.ElementType != DataType.Int64)
        {
            fed = builder.Cast(fed, decoderIds.ElementType);
        }

        builder.InsertionPoint = null;
        decoderIds.ReplaceAllUsesWith(fed);
        graph.Inputs.Remove(decoderIds);

        Value logits = LossMath.AsFloat(builder, prediction);
        Value vocab = builder.Op("Slice", [builder.Op("Shape", [logits]), builder.Int64s("vocab_start", 2), builder.Int64s("vocab_end", 3)]);
        Value scores = builder.Op("Reshape", [logits, builder.Op("Concat", [builder.Int64s("minus_one", -1), vocab], [Attr.Int("axis", 0)])]);
        Value flatLabels = builder.Op("Reshape", [labels, builder.Int64s("flat", -1)]);
        return LossMath.MeanCrossEntropy(builder, scores, flatLabels, CausalLmLoss.IgnoreIndex, logits.ElementType);
    }
}
