using Onnx.Lora.Ir;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Loss;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Tasks;

/// <summary>
/// Sequence classification over a model that ends in its own head (BERT/RoBERTa-style exports of
/// <c>*ForSequenceClassification</c>: logits [batch, classes], pooling as the model does it, e.g. BERT's tanh pooler
/// over [CLS]). Rows are <c>{"text": ..., "label": id or name}</c> (names through the model's config.json label2id);
/// the loss is mean cross-entropy over the rows, and evaluation reports accuracy beside the loss.
/// </summary>
/// <remarks>
/// NOTE: the head is not trained in full (PEFT's modules_to_save): it stays frozen unless <c>lora_targets</c> names it
/// (all-linear leaves output heads out, as PEFT does), in which case it gets LoRA like any linear layer; with
/// r ≥ classes that LoRA can reach every update of the head's weight. The adapter therefore holds LoRA tensors only,
/// and adapter_config.json says task_type SEQ_CLS with modules_to_save null: PEFT, loading it, wraps the head as
/// modules_to_save and keeps the base model's head, which is the head this adapter was trained with.
/// </remarks>
public sealed class SequenceClassificationTask : ITrainingTask
{
    private readonly ClassLabels _labels;

    private SequenceClassificationTask(ClassLabels labels)
    {
        _labels = labels;
    }

    /// <inheritdoc />
    public string Name => TrainingTasks.SequenceClassification;

    /// <inheritdoc />
    public string PeftTaskType => "SEQ_CLS";

    /// <summary>Classes of the model's head.</summary>
    public int ClassCount => _labels.ClassCount;

    /// <inheritdoc />
    public ILossHead LossHead { get; } = CreateLossHead();

    /// <summary>The loss the training graphs get: cross-entropy of logits [batch, classes] against column 0 of the label rows.</summary>
    public static SequenceClassificationLoss CreateLossHead() => new() { LabelColumn = 0 };

    /// <summary>The task for the model at <paramref name="modelPath"/>.</summary>
    /// <exception cref="GraphValidationException">The model's logits are not [batch, classes] with a fixed class count.</exception>
    /// <exception cref="DataException">The model's config.json maps labels to ids outside its classes.</exception>
    public static SequenceClassificationTask Create(string modelPath, ModelLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        int classes = limits.ClassCount
            ?? throw new GraphValidationException($"Model '{modelPath}' is not a sequence classifier: --task seq-cls needs a 'logits' output [batch, classes] with a fixed class count (the model's own head).");
        return new SequenceClassificationTask(ClassLabels.ForModel(modelPath, classes));
    }

    /// <inheritdoc />
    public List<TokenizedExample> LoadExamples(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples) =>
        ClassificationDataset.Load(path, tokenizer, options, _labels, out overlongExamples);
}
