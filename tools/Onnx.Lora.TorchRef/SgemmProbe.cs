using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.TorchRef;

/// <summary>
/// The machine's fp32 GEMM ceiling as our trainer sees it: one [n,n]·[n,n] MatMul run by an ORT InferenceSession
/// (MLAS sgemm) with the given thread count; best of <c>runs</c> after a warm-up, 2n³ FLOP per run.
/// </summary>
internal static class SgemmProbe
{
    public static double Measure(int n, int threads, int runs)
    {
        var b = new GraphBuilder("sgemm", opset: 17);
        Value x = b.Input("a", DataType.Float, n, n);
        Value y = b.Input("b", DataType.Float, n, n);
        b.Output(b.MatMul(x, y), "c", DataType.Float, n, n);
        byte[] bytes = OnnxWriter.ToBytes(b.Model);

        using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1 };
        using var session = new InferenceSession(bytes, options);
        var rng = new Random(3);
        float[] data = Enumerable.Range(0, n * n).Select(_ => (float)rng.NextDouble()).ToArray();
        float[] result = new float[n * n];
        long[] shape = [n, n];
        using OrtValue a = OrtValue.CreateTensorValueFromMemory(data, shape);
        using OrtValue bb = OrtValue.CreateTensorValueFromMemory(data, shape);
        using OrtValue c = OrtValue.CreateTensorValueFromMemory(result, shape);
        using var runOptions = new RunOptions();
        session.Run(runOptions, ["a", "b"], [a, bb], ["c"], [c]);
        double best = double.MaxValue;
        for (int i = 0; i < runs; i++)
        {
            var sw = Stopwatch.StartNew();
            session.Run(runOptions, ["a", "b"], [a, bb], ["c"], [c]);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }

        return 2.0 * n * n * n / best / 1e9;
    }
}
