using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.TorchRef;

/// <summary>Runs a torch-style causal LM in ONNX Runtime (CPU) and returns its logits.</summary>
internal static class OrtLogits
{
    public static float[] Run(string modelPath, TokenBatch batch, int threads)
    {
        using var options = Options(threads);
        using var session = new InferenceSession(modelPath, options);
        return Run(session, batch);
    }

    public static float[] Run(Model model, TokenBatch batch, int threads)
    {
        using var options = Options(threads);
        using var session = new InferenceSession(OnnxWriter.ToBytes(model), options);
        return Run(session, batch);
    }

    private static SessionOptions Options(int threads) => new() { IntraOpNumThreads = threads, InterOpNumThreads = 1 };

    private static float[] Run(InferenceSession session, TokenBatch batch)
    {
        long[] shape = [batch.BatchSize, batch.SeqLen];
        using OrtValue ids = OrtValue.CreateTensorValueFromMemory(batch.Ids, shape);
        using OrtValue mask = OrtValue.CreateTensorValueFromMemory(batch.Mask, shape);
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, ["input_ids", "attention_mask"], [ids, mask], ["logits"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }
}
