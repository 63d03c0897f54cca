using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Generation;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Evaluation;

/// <summary>The loss of a model on a dataset.</summary>
/// <param name="Loss">Mean next-token cross-entropy per target token (nats).</param>
/// <param name="TargetTokens">Tokens that carried loss.</param>
/// <param name="Examples">Examples in the file.</param>
/// <param name="Rows">Rows scored (packing joins and splits examples).</param>
/// <param name="Overlong">Examples longer than seq_length (truncated, or split with packing).</param>
public sealed record EvaluationResult(double Loss, long TargetTokens, int Examples, int Rows, int Overlong)
{
    /// <summary>exp(loss).</summary>
    public double Perplexity => Math.Exp(Loss);

    /// <summary>Share of rows classified as their label (sequence classification); null for language models.</summary>
    public double? Accuracy { get; init; }
}

/// <summary>
/// <c>onnx-lora eval</c>: the loss and perplexity of any causal LM (base, LoRA, merged, or a model with adapter slots and
/// <c>.onnx_adapter</c> files active) on a JSONL file, with the rows training builds (<see cref="DataPipeline.LoadRows"/>)
/// and the loss training reports: Σ −log softmax(logits[t])[label[t+1]] over target labels, divided by their count,
/// accumulated over the whole file (token-weighted, as the trainer's evaluation).
/// </summary>
/// <remarks>
/// Each row runs alone (batch 1, no padding), so the result does not depend on batch size; the forward pass is the
/// model's own inference graph, not the trainer's loss graph — which is what makes it a check of the trainer.
/// </remarks>
public static class ModelEvaluator
{
    /// <summary>Scores <paramref name="dataPath"/> with <paramref name="modelPath"/> (and <paramref name="adapterPaths"/>).</summary>
    /// <param name="modelPath">An .onnx causal LM.</param>
    /// <param name="adapterPaths"><c>.onnx_adapter</c> files, activated through ORT's adapter API on a model with slots.</param>
    /// <param name="dataPath">The JSONL file.</param>
    /// <param name="tokenizer">The tokenizer.</param>
    /// <param name="options">seq_length, packing, truncate and completion_only_loss, as for training.</param>
    /// <exception cref="Onnx.Lora.LoraException">The model, an adapter or the data is bad; the message names it.</exception>
    public static EvaluationResult Evaluate(string modelPath, IReadOnlyList<string> adapterPaths, string dataPath, TextTokenizer tokenizer, TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        using TextGenerator model = TextGenerator.Create(modelPath, adapterPaths);
        if (model.MaxPositions is int max && options.SeqLength > max)
        {
            throw new DataException($"seq_length {options.SeqLength} is longer than model '{modelPath}' supports ({max} positions).");
        }

        (List<TrainingRow> rows, int examples, int overlong) = DataPipeline.LoadRows(dataPath, tokenizer, options, model.VocabSize ?? tokenizer.VocabSize);
        double lossSum = 0;
        long tokens = 0;
        foreach (TrainingRow row in rows)
        {
            int[] labels = row.Labels;
            model.Score(row.InputIds, (position, logits) =>
            {
                int next = position + 1;
                if (next < labels.Length && labels[next] != TokenizedExample.IgnoreIndex)
                {
                    lossSum += CrossEntropy.Of(logits, labels[next]);
                    tokens++;
                }
            });
        }

        if (tokens == 0)
        {
            throw new DataException($"Data file '{dataPath}' has no target tokens to score.");
        }

        return new EvaluationResult(lossSum / tokens, tokens, examples, rows.Count, overlong);
    }
}
