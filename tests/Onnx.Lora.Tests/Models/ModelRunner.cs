using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

/// <summary>Runs decoder models in ORT CPU with given token ids (the inputs OrtRunner would randomize).</summary>
internal sealed class ModelRunner : IDisposable
{
    private readonly InferenceSession _session;

    public ModelRunner(string path)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        _session = new InferenceSession(path, options);
    }

    public static ModelRunner FromModel(Model model, TempDir dir, string name = "model.onnx")
    {
        string path = dir.File(name);
        OnnxWriter.Save(model, path);
        return new ModelRunner(path);
    }

    public InferenceSession Session => _session;

    /// <summary>Logits [batch, seq, vocab] for ids [batch, seq] with an all-ones attention mask unless given.</summary>
    public float[] Logits(long[] ids, int batch = 1, long[]? mask = null, Dictionary<string, OrtValue>? extra = null)
    {
        int seq = ids.Length / batch;
        mask ??= Enumerable.Repeat(1L, ids.Length).ToArray();
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [batch, seq]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, [batch, seq]);
        var inputs = new Dictionary<string, OrtValue> { ["input_ids"] = idsValue, ["attention_mask"] = maskValue };
        foreach (var kv in extra ?? [])
        {
            inputs[kv.Key] = kv.Value;
        }

        // A decoder with past gets positions 0..seq-1 and an empty past (past_sequence_length 0): the whole-sequence
        // forward pass that a model without a cache computes.
        var owned = new List<OrtValue>();
        if (_session.InputMetadata.ContainsKey("position_ids") && !inputs.ContainsKey("position_ids"))
        {
            long[] positions = Enumerable.Range(0, ids.Length).Select(i => (long)(i % seq)).ToArray();
            owned.Add(inputs["position_ids"] = OrtValue.CreateTensorValueFromMemory(positions, [batch, seq]));
        }

        foreach ((string name, NodeMetadata meta) in _session.InputMetadata.Where(p => p.Key.StartsWith("past_key_values.", StringComparison.Ordinal) && !inputs.ContainsKey(p.Key)))
        {
            owned.Add(inputs[name] = OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [batch, meta.Dimensions[1], 0, meta.Dimensions[3]]));
        }

        try
        {
            using var runOptions = new RunOptions();
            using var outputs = _session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), ["logits"]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            owned.ForEach(v => v.Dispose());
        }
    }

    public void Dispose() => _session.Dispose();
}
