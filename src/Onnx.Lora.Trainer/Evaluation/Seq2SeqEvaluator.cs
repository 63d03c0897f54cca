using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Data;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Evaluation;

/// <summary>
/// <c>onnx-lora eval --task seq2seq-lm</c>: the loss of an encoder-decoder export as it ships (encoder_model.onnx then
/// decoder_model.onnx, base or merged) on <c>{"source", "target"}</c> rows: the encoder reads the source, the decoder
/// the target shifted right behind its start token, and the loss is the mean cross-entropy over the target's tokens
/// (token-weighted over the file) — what <c>train --task seq2seq-lm</c> reports as eval loss for the same weights.
/// </summary>
/// <remarks>
/// Each row runs alone (batch 1, no padding) through the two files with ORT, not through the trainer's joined graph,
/// so the result checks the training graph and the merge of each part. A merged decoder (If on use_cache_branch) is
/// run with use_cache_branch = false and empty past tensors.
/// </remarks>
public static class Seq2SeqEvaluator
{
    /// <summary>Scores <paramref name="dataPath"/> with the export at <paramref name="modelPath"/> (its folder or a part's file).</summary>
    /// <param name="modelPath">The export's folder, or either part's file.</param>
    /// <param name="dataPath">The JSONL file.</param>
    /// <param name="tokenizer">The tokenizer.</param>
    /// <param name="options">seq_length and truncation as for training (the vocabulary is the decoder's logits axis).</param>
    /// <exception cref="LoraException">The export, its config or the data is bad; the message names it.</exception>
    /// <exception cref="FileNotFoundException">A part of the export is missing.</exception>
    public static EvaluationResult Evaluate(string modelPath, string dataPath, TextTokenizer tokenizer, DatasetOptions options)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        (string encoderPath, string decoderPath) = EncoderDecoderChain.FindParts(modelPath);
        DecoderTokens tokens = EncoderDecoderChain.ReadDecoderTokens(modelPath);
        using var sessionOptions = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using InferenceSession encoder = EvaluationSession.Open(encoderPath, sessionOptions);
        using InferenceSession decoder = EvaluationSession.Open(decoderPath, sessionOptions);
        int vocab = decoder.OutputMetadata.TryGetValue("logits", out NodeMetadata? logitsMeta) && logitsMeta.Dimensions is [.., > 0 and var v] ? v
            : throw new OnnxSerializationException($"Decoder '{decoderPath}' has no logits output with a fixed vocabulary axis.");
        List<TokenizedExample> rows = Seq2SeqDataset.Load(dataPath, tokenizer, options with { ModelVocabSize = vocab }, out int overlong);
        using var run = new RunOptions();
        string statesName = encoder.OutputMetadata.ContainsKey("last_hidden_state") ? "last_hidden_state" : encoder.OutputNames[0];
        double lossSum = 0;
        long counted = 0;
        foreach (TokenizedExample row in rows)
        {
            long[] source = [.. row.InputIds.AsSpan(0, row.AttendedTokens ?? row.InputIds.Length).ToArray().Select(i => (long)i)];
            long[] labels = [.. row.Labels.TakeWhile(l => l != TokenizedExample.IgnoreIndex).Select(l => (long)l)];
            long[] decoderIds = new long[labels.Length];
            decoderIds[0] = tokens.DecoderStart;
            labels.AsSpan(0, labels.Length - 1).CopyTo(decoderIds.AsSpan(1)); // HF's shift_tokens_right (no −100 inside a row)
            long[] mask = new long[source.Length];
            Array.Fill(mask, 1L);
            using OrtValue ids = OrtValue.CreateTensorValueFromMemory(source, [1, source.Length]);
            using OrtValue maskValue = OrtValue.CreateTensorValueFromMemory(mask, [1, source.Length]);
            using IDisposableReadOnlyCollection<OrtValue> states = encoder.Run(run, ["input_ids", "attention_mask"], [ids, maskValue], [statesName]);
            using OrtValue decoderIdsValue = OrtValue.CreateTensorValueFromMemory(decoderIds, [1, decoderIds.Length]);
            var feeds = new DecoderFeeds(decoder, decoderIdsValue, maskValue, states[0]);
            using IDisposableReadOnlyCollection<OrtValue> outputs = decoder.Run(run, feeds.Names, feeds.Values, ["logits"]);
            feeds.DisposeOwned();
            ReadOnlySpan<float> logits = outputs[0].GetTensorDataAsSpan<float>();
            for (int t = 0; t < labels.Length; t++)
            {
                lossSum += CrossEntropy.Of(logits.Slice(t * vocab, vocab), labels[t]);
                counted++;
            }
        }

        return counted > 0 ? new EvaluationResult(lossSum / counted, counted, rows.Count, rows.Count, overlong)
            : throw new DataException($"Data file '{dataPath}' has no target tokens to score.");
    }

    /// <summary>What Optimum's decoders take: token ids, the cross-attention mask, the encoder's states, and for a
    /// merged decoder use_cache_branch = false with empty past tensors.</summary>
    private sealed class DecoderFeeds
    {
        // ORT reads feeds and never writes them: one array serves every row.
        private static readonly bool[] s_noCache = [false];
        private readonly List<OrtValue> _owned = [];

        public DecoderFeeds(InferenceSession decoder, OrtValue ids, OrtValue mask, OrtValue states)
        {
            foreach ((string name, NodeMetadata meta) in decoder.InputMetadata)
            {
                Names.Add(name);
                Values.Add(name switch
                {
                    "input_ids" => ids,
                    "encoder_attention_mask" => mask,
                    "encoder_hidden_states" => states,
                    "use_cache_branch" => Own(OrtValue.CreateTensorValueFromMemory(s_noCache, [1])),
                    _ when name.StartsWith("past_key_values", StringComparison.Ordinal) => Own(EmptyPast(meta)),
                    _ => throw new OnnxSerializationException($"The decoder input '{name}' is not one an Optimum decoder takes (input_ids, encoder_attention_mask, encoder_hidden_states, use_cache_branch, past_key_values.*)."),
                });
            }
        }

        public List<string> Names { get; } = [];

        public List<OrtValue> Values { get; } = [];

        public void DisposeOwned() => _owned.ForEach(v => v.Dispose());

        private OrtValue Own(OrtValue value)
        {
            _owned.Add(value);
            return value;
        }

        private static OrtValue EmptyPast(NodeMetadata meta)
        {
            // [batch, heads, past_sequence, head_dim]: batch 1, the symbolic sequence axis empty.
            long[] dims = meta.Dimensions.Select((d, i) => d >= 0 ? d : meta.SymbolicDimensions[i].Contains("batch", StringComparison.OrdinalIgnoreCase) ? 1L : 0L).ToArray();
            return meta.ElementType == typeof(Float16)
                ? OrtValue.CreateTensorValueFromMemory(Array.Empty<Float16>(), dims)
                : OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), dims);
        }
    }
}
