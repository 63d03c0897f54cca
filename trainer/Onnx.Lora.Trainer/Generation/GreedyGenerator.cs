using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Graph;
using Onnx.Lora.Trainer.Data;

namespace Onnx.Lora.Trainer.Generation;

/// <summary>
/// Greedy decoding with a causal LM that has no KV cache (inputs input_ids [+ attention_mask, position_ids], output
/// logits [batch, seq, vocab]): the whole prefix is re-run for every token. Meant for samples from small models
/// (before/after training, the demo), not for serving.
/// </summary>
public sealed class GreedyGenerator : IDisposable
{
    private readonly InferenceSession _session;
    private readonly string _logitsName;

    /// <summary>Opens <paramref name="modelPath"/> on the CPU.</summary>
    /// <exception cref="LoraException">The model has KV-cache inputs or lacks input_ids / logits.</exception>
    public GreedyGenerator(string modelPath)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        _session = new InferenceSession(modelPath);
        string? unsupported = _session.InputMetadata.Keys.FirstOrDefault(n => n is not ("input_ids" or "attention_mask" or "position_ids"));
        if (unsupported is not null || !_session.InputMetadata.ContainsKey("input_ids"))
        {
            _session.Dispose();
            throw new LoraException($"Model '{modelPath}' has input '{unsupported ?? "(no input_ids)"}'; greedy generation supports models with input_ids [, attention_mask, position_ids] and no KV cache.");
        }

        _logitsName = _session.OutputMetadata.ContainsKey("logits") ? "logits" : _session.OutputMetadata.Keys.First();
    }

    /// <summary>
    /// Continues <paramref name="prompt"/> (after BOS when the tokenizer has one) by up to <paramref name="maxNewTokens"/>
    /// tokens, stopping at EOS; returns the decoded continuation including the prompt.
    /// </summary>
    public string Generate(TextTokenizer tokenizer, string prompt, int maxNewTokens)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentOutOfRangeException.ThrowIfNegative(maxNewTokens);
        var ids = new List<long>();
        if (tokenizer.BosId is int bos)
        {
            ids.Add(bos);
        }

        ids.AddRange(tokenizer.Encode(prompt).Select(i => (long)i));
        using var runOptions = new RunOptions();
        for (int n = 0; n < maxNewTokens; n++)
        {
            long[] inputIds = [.. ids];
            long[] shape = [1, inputIds.Length];
            var names = new List<string> { "input_ids" };
            var values = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(inputIds, shape) };
            try
            {
                if (_session.InputMetadata.ContainsKey("attention_mask"))
                {
                    names.Add("attention_mask");
                    values.Add(OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, inputIds.Length).ToArray(), shape));
                }

                if (_session.InputMetadata.ContainsKey("position_ids"))
                {
                    names.Add("position_ids");
                    values.Add(OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, inputIds.Length).Select(i => (long)i).ToArray(), shape));
                }

                using IDisposableReadOnlyCollection<OrtValue> outputs = _session.Run(runOptions, names, values, [_logitsName]);
                ReadOnlySpan<float> logits = outputs[0].GetTensorDataAsSpan<float>();
                int vocab = logits.Length / inputIds.Length;
                int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits[^vocab..]);
                if (tokenizer.EosId == next)
                {
                    break;
                }

                ids.Add(next);
            }
            finally
            {
                foreach (OrtValue v in values)
                {
                    v.Dispose();
                }
            }
        }

        return tokenizer.Decode(ids.Select(i => (int)i));
    }

    /// <inheritdoc />
    public void Dispose() => _session.Dispose();
}
