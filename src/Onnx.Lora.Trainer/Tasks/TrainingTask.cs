using Onnx.Lora.Ir;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Loss;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Tasks;

/// <summary>
/// What a kind of fine-tuning (PEFT's task_type) changes in a run: how rows of the data become training rows, which
/// loss (and evaluation metrics) the model's output gets, and the task type the PEFT adapter records. Everything else
/// (loader, schedule, checkpoints, resume, data parallelism, export) is the same for every task.
/// </summary>
public interface ITrainingTask
{
    /// <summary>The <c>task</c> key's value.</summary>
    string Name { get; }

    /// <summary>PEFT's task_type written to adapter_config.json (CAUSAL_LM, SEQ_CLS).</summary>
    string PeftTaskType { get; }

    /// <summary>The loss appended to the model's output.</summary>
    ILossHead LossHead { get; }

    /// <summary>Reads, tokenizes and validates every row of a JSONL file into training rows.</summary>
    /// <exception cref="DataException">A row is bad; the message names file:line.</exception>
    List<TokenizedExample> LoadExamples(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples);
}

/// <summary>The tasks <c>onnx-lora train --task</c> knows.</summary>
public static class TrainingTasks
{
    /// <summary>Decoder-only next-token prediction (the default).</summary>
    public const string CausalLm = "causal-lm";

    /// <summary>Sequence classification with the model's own head.</summary>
    public const string SequenceClassification = "seq-cls";

    /// <summary>Encoder-decoder generation with teacher forcing (Optimum's encoder_model.onnx + decoder_model.onnx).</summary>
    public const string Seq2SeqLm = "seq2seq-lm";

    /// <summary>Every task name, the default first.</summary>
    public static IReadOnlyList<string> Known { get; } = [CausalLm, SequenceClassification, Seq2SeqLm];

    /// <summary>The task of a run, with what it needs to know of the model (its classes, for classification).</summary>
    /// <exception cref="LoraException">The model does not fit the task (e.g. no [batch, classes] logits for seq-cls).</exception>
    public static ITrainingTask Create(string name, string modelPath, ModelLimits limits)
    {
        ArgumentNullException.ThrowIfNull(limits);
        return name switch
        {
            CausalLm => CausalLmTask.Instance,
            SequenceClassification => SequenceClassificationTask.Create(modelPath, limits),
            Seq2SeqLm => new Seq2SeqLmTask(limits.DecoderTokens
                ?? throw new GraphValidationException($"Model '{modelPath}' was not opened as an encoder-decoder export.")),
            _ => throw new ArgumentException($"Unknown task '{name}'; expected one of {string.Join(", ", Known)}.", nameof(name)),
        };
    }
}

/// <summary>Next-token prediction on text, prompt-completion, chat or alpaca rows.</summary>
public sealed class CausalLmTask : ITrainingTask
{
    /// <summary>The one instance (the task holds no state).</summary>
    public static CausalLmTask Instance { get; } = new();

    private CausalLmTask()
    {
    }

    /// <inheritdoc />
    public string Name => TrainingTasks.CausalLm;

    /// <inheritdoc />
    public string PeftTaskType => "CAUSAL_LM";

    /// <inheritdoc />
    public ILossHead LossHead { get; } = new CausalLmLoss();

    /// <inheritdoc />
    public List<TokenizedExample> LoadExamples(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples) =>
        JsonlDataset.Load(path, tokenizer, options, out overlongExamples);
}

/// <summary>
/// Encoder-decoder generation (PEFT's SEQ_2_SEQ_LM): <c>{"source", "target"}</c> rows, the encoder reading the source,
/// the decoder the target shifted right behind its start token, and the loss over the target's tokens.
/// </summary>
/// <param name="tokens">The decoder start and pad ids of the export.</param>
public sealed class Seq2SeqLmTask(DecoderTokens tokens) : ITrainingTask
{
    /// <inheritdoc />
    public string Name => TrainingTasks.Seq2SeqLm;

    /// <inheritdoc />
    public string PeftTaskType => "SEQ_2_SEQ_LM";

    /// <inheritdoc />
    public ILossHead LossHead { get; } = new Seq2SeqLmLoss(tokens.DecoderStart, tokens.Pad);

    /// <inheritdoc />
    public List<TokenizedExample> LoadExamples(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples) =>
        Seq2SeqDataset.Load(path, tokenizer, options, out overlongExamples);
}
