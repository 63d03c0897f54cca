using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Data;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Evaluation;

/// <summary>
/// <c>onnx-lora eval --task seq-cls</c>: loss and accuracy of a sequence classifier (logits [batch, classes], base or
/// merged) on <c>{"text", "label"}</c> rows, each row alone through ORT: mean cross-entropy per row and the share of
/// rows whose arg-max class is the label — what <c>train --task seq-cls</c> reports at evaluation for the same weights.
/// </summary>
public static class ClassifierEvaluator
{
    /// <summary>Scores <paramref name="dataPath"/> with the classifier at <paramref name="modelPath"/>.</summary>
    /// <param name="modelPath">An .onnx classifier.</param>
    /// <param name="dataPath">The JSONL file.</param>
    /// <param name="tokenizer">The tokenizer.</param>
    /// <param name="options">seq_length and truncation as for training (the vocabulary is the model's).</param>
    /// <exception cref="LoraException">The model is not a classifier, or the data is bad; the message names it.</exception>
    public static EvaluationResult Evaluate(string modelPath, string dataPath, TextTokenizer tokenizer, DatasetOptions options)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        using var sessionOptions = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using InferenceSession session = EvaluationSession.Open(modelPath, sessionOptions);
        int classes = session.OutputMetadata.TryGetValue("logits", out NodeMetadata? meta) && meta.Dimensions is [_, > 0 and var n] ? n
            : throw new GraphValidationException($"Model '{modelPath}' is not a sequence classifier: eval --task seq-cls needs a 'logits' output [batch, classes] with a fixed class count.");
        List<TokenizedExample> rows = ClassificationDataset.Load(dataPath, tokenizer, options, ClassLabels.ForModel(modelPath, classes), out int overlong);
        using var run = new RunOptions();
        double lossSum = 0;
        int correct = 0;
        foreach (TokenizedExample row in rows)
        {
            long[] shape = [1, row.InputIds.Length];
            var owned = new List<OrtValue>();
            try
            {
                var names = new List<string>();
                foreach (string name in session.InputNames)
                {
                    names.Add(name);
                    owned.Add(name switch
                    {
                        "input_ids" => OrtValue.CreateTensorValueFromMemory(row.InputIds.Select(i => (long)i).ToArray(), shape),
                        "attention_mask" => OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, row.InputIds.Length).ToArray(), shape),
                        "token_type_ids" => OrtValue.CreateTensorValueFromMemory(new long[row.InputIds.Length], shape),
                        _ => throw new GraphValidationException($"Model '{modelPath}' takes '{name}', which a classifier's text rows cannot feed (input_ids, attention_mask, token_type_ids)."),
                    });
                }

                using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(run, names, owned, ["logits"]);
                ReadOnlySpan<float> logits = outputs[0].GetTensorDataAsSpan<float>();
                int label = row.Labels[0];
                lossSum += CrossEntropy.Of(logits, label);
                correct += CrossEntropy.ArgMax(logits) == label ? 1 : 0;
            }
            finally
            {
                owned.ForEach(v => v.Dispose());
            }
        }

        return new EvaluationResult(lossSum / rows.Count, rows.Count, rows.Count, rows.Count, overlong) { Accuracy = (double)correct / rows.Count };
    }
}
