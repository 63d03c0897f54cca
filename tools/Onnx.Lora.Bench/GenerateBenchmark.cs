using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Bench;

/// <summary>
/// Decoding speed of <see cref="TextGenerator"/> with the KV cache vs re-running the sequence per token, side by side in
/// one process on the stories260K model converted with a cache (one ORT thread, greedy from BOS, the same tokens both
/// ways). Prints median decode tokens/s of each and the ratio, per generated length.
/// </summary>
internal static class GenerateBenchmark
{
    public static int Run(string[] args)
    {
        string checkpoint = args.Length > 0 ? args[0] : Path.Combine("models", "default", "stories260K", "stories260K.bin");
        int runs = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5;
        string dir = Directory.CreateTempSubdirectory("onnx-lora-bench-generate").FullName;
        try
        {
            string model = Path.Combine(dir, "stories260K.onnx");
            Llama2cConverter.ConvertToFile(checkpoint, model);
            using var sessionOptions = new SessionOptions { IntraOpNumThreads = 1, InterOpNumThreads = 1 };
            using TextGenerator generator = TextGenerator.Create(model, sessionOptions: sessionOptions);
            Console.WriteLine($"stories260K greedy from BOS, 1 ORT thread, median of {runs} runs each (alternating), {Environment.ProcessorCount} cores");
            Console.WriteLine("| max new tokens | generated (EOS ends early) | KV cache tokens/s | recompute tokens/s | KV / recompute |");
            Console.WriteLine("|---|---|---|---|---|");
            foreach (int tokens in new[] { 64, 256, 500 })
            {
                var options = new GenerationOptions { MaxNewTokens = tokens };
                generator.Generate([1], options);
                generator.Generate([1], options with { UseKvCache = false });
                var cached = new double[runs];
                var recomputed = new double[runs];
                int generated = 0;
                for (int i = 0; i < runs; i++)
                {
                    GenerationResult result = generator.Generate([1], options);
                    cached[i] = result.DecodeTokensPerSecond;
                    generated = result.NewTokens.Count;
                    recomputed[i] = generator.Generate([1], options with { UseKvCache = false }).DecodeTokensPerSecond;
                }

                double kv = Median(cached);
                double full = Median(recomputed);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {tokens} | {generated} | {kv:F0} | {full:F0} | {kv / full:F2} |"));
            }

            return 0;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static double Median(double[] values)
    {
        double[] sorted = [.. values.Order()];
        return sorted[sorted.Length / 2];
    }
}
