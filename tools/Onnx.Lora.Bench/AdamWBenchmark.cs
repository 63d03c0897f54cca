using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Trainer.Optim;

namespace Onnx.Lora.Bench;

/// <summary>
/// The AdamW update in vectorized C# (TensorPrimitives) vs the same update as an ONNX model run by ONNX Runtime CPU,
/// side by side in one process on the same parameter sets. Prints median milliseconds per step and the ratio ONNX / C#.
/// </summary>
internal static class AdamWBenchmark
{
    public static int Run(string[] args)
    {
        int steps = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 30;
        (string Name, int[] Sizes)[] cases =
        [
            ("stories260K LoRA r=8 (q,k,v,o,gate,up,down x 5 layers)", StoriesSizes()),
            ("Llama-7B-shaped LoRA r=16, 8 layers", LlamaSizes(layers: 8, hidden: 4096, intermediate: 11008, rank: 16)),
        ];

        Console.WriteLine($"AdamW update, median of {steps} steps after >= 50 warm-up steps and >= 1 s, {Environment.ProcessorCount} cores");
        Console.WriteLine("| parameters | tensors | C# ms/step | ONNX ms/step | ONNX / C# |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach ((string name, int[] sizes) in cases)
        {
            double cs = Measure(sizes, onnx: false, steps);
            double ox = Measure(sizes, onnx: true, steps);
            long total = sizes.Sum(s => (long)s);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name}: {total:N0} | {sizes.Length} | {cs:F3} | {ox:F3} | {ox / cs:F2} |"));
        }

        return 0;
    }

    private static double Measure(int[] sizes, bool onnx, int steps)
    {
        var rng = new Random(1);
        ParameterBuffer[] buffers = sizes.Select((n, i) =>
        {
            var p = new ParameterBuffer($"p{i}", new float[n], new float[n]);
            for (int j = 0; j < n; j++)
            {
                p.Values[j] = (float)(rng.NextDouble() - 0.5);
                p.Gradients[j] = (float)(rng.NextDouble() - 0.5) * 1e-2f;
            }

            return p;
        }).ToArray();
        using IParameterOptimizer optimizer = onnx ? new OnnxAdamW(buffers, new AdamWOptions()) : new AdamW(buffers, new AdamWOptions());
        // Warm up for at least 50 steps and 1 s so tiered JIT has promoted the TensorPrimitives kernels to optimized code.
        long warmStart = Stopwatch.GetTimestamp();
        for (int i = 0; i < 50 || Stopwatch.GetElapsedTime(warmStart).TotalSeconds < 1; i++)
        {
            optimizer.Step(1e-4f);
        }

        var times = new double[steps];
        for (int i = 0; i < steps; i++)
        {
            long start = Stopwatch.GetTimestamp();
            optimizer.Step(1e-4f);
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }

        Array.Sort(times);
        return times[steps / 2];
    }

    private static int[] StoriesSizes()
    {
        const int Dim = 64, KvDim = 32, Hidden = 172, Rank = 8;
        var sizes = new List<int>();
        for (int layer = 0; layer < 5; layer++)
        {
            foreach ((int inF, int outF) in new[] { (Dim, Dim), (Dim, KvDim), (Dim, KvDim), (Dim, Dim), (Dim, Hidden), (Dim, Hidden), (Hidden, Dim) })
            {
                sizes.Add(inF * Rank);
                sizes.Add(Rank * outF);
            }
        }

        return [.. sizes];
    }

    private static int[] LlamaSizes(int layers, int hidden, int intermediate, int rank)
    {
        var sizes = new List<int>();
        for (int layer = 0; layer < layers; layer++)
        {
            foreach ((int inF, int outF) in new[] { (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, intermediate), (hidden, intermediate), (intermediate, hidden) })
            {
                sizes.Add(inF * rank);
                sizes.Add(rank * outF);
            }
        }

        return [.. sizes];
    }
}
