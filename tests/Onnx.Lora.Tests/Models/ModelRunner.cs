using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
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

        using var runOptions = new RunOptions();
        using var outputs = _session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), ["logits"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    public void Dispose() => _session.Dispose();
}
