using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;

namespace Onnx.Lora.Bench;

/// <summary>
/// <c>data-parallel [--size 3.95m|135m | --model M.onnx] [--dir out/bench/dp] [--steps 8 --warmup 2 --batch 4 --seq 64 --rounds 3]</c>:
/// tokens/s of <c>onnx-lora train</c> with the same global batch three ways, side by side in each round: 1 rank × 1
/// thread (batch 2b), <c>mpirun -np 2</c> × 1 thread (batch b per rank), 1 rank × 2 threads (batch 2b). Prints the
/// median tokens/s per step of each (steps after the warm-up, from metrics.jsonl, which counts the global batch), the
/// ratios, and the largest relative difference of the per-step losses (the three must train alike).
/// </summary>
internal static class DataParallelBenchmark
{
    private sealed record Setup(string Name, int Ranks, int Threads, int BatchFactor);

    public static int Run(string[] args)
    {
        string root = BenchArgs.RepoRoot();
        string dir = Path.GetFullPath(BenchArgs.Option(args, "--dir") ?? Path.Combine(root, "out", "bench", "dp"));
        int steps = Int(args, "--steps", 8), warmup = Int(args, "--warmup", 2), batch = Int(args, "--batch", 4), seq = Int(args, "--seq", 64), rounds = Int(args, "--rounds", 3);
        string cli = BenchArgs.Option(args, "--cli") ?? Path.Combine(root, "tools", "Onnx.Lora.Cli", "bin", "Release", "net10.0", "onnx-lora.dll");
        Directory.CreateDirectory(dir);
        int vocab = 0;
        string model = BenchArgs.Option(args, "--model") ?? MakeModel(BenchArgs.Option(args, "--size") ?? "3.95m", dir, out vocab);
        string tokenizer = BenchArgs.Option(args, "--tokenizer") ?? ByteLevelTokenizer(vocab, dir);
        string[] common =
        [
            "train", "--model", model, "--tokenizer", tokenizer,
            "--data", Path.Combine(root, "models", "default", "data", "tiny-stories.jsonl"), "--seq-length", $"{seq}", "--truncate",
            "--max-steps", $"{steps}", "--save-steps", "0", "--lora-rank", "8", "--lora-alpha", "16", "--lora-targets", "all-linear",
            "--learning-rate", "1e-3", "--seed", "7", "--memory-limit", "none",
        ];
        Setup[] setups = [new("1 rank x 1 thread", 1, 1, 2), new("2 ranks x 1 thread", 2, 1, 1), new("1 rank x 2 threads", 1, 2, 2)];
        var speeds = setups.ToDictionary(s => s, _ => new List<double>());
        var losses = new Dictionary<Setup, double[]>();
        for (int round = 0; round < rounds; round++)
        {
            foreach (Setup s in setups)
            {
                string output = Path.Combine(dir, $"run-{round}-{s.Ranks}r{s.Threads}t");
                if (Directory.Exists(output))
                {
                    Directory.Delete(output, recursive: true);
                }

                string[] arguments = [.. common, "--batch-size", $"{batch * s.BatchFactor}", "--intra-op-threads", $"{s.Threads}", "--output-dir", output];
                RunTrain(cli, s.Ranks, arguments);
                (double speed, double[] stepLosses) = ReadMetrics(Path.Combine(output, "metrics.jsonl"), warmup);
                speeds[s].Add(speed);
                losses[s] = stepLosses;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"round {round + 1} {s.Name,-20} {speed,9:F0} tok/s"));
            }
        }

        double Median(Setup s) => speeds[s].Order().ElementAt(speeds[s].Count / 2);
        double worst = setups.Skip(1).Max(s => losses[s].Zip(losses[setups[0]], (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max());
        Console.WriteLine($"model {model}; global batch {2 * batch} x seq {seq}; {steps} steps ({warmup} warm-up); medians of {rounds} rounds");
        foreach (Setup s in setups)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {s.Name,-20} {Median(s),9:F0} tok/s  (runs: {string.Join(", ", speeds[s].Select(v => v.ToString("F0", CultureInfo.InvariantCulture)))})"));
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT 2r1t/1r1t={Median(setups[1]) / Median(setups[0]):F2} 2r1t/1r2t={Median(setups[1]) / Median(setups[2]):F2} max_loss_rel_diff={worst:E1}"));
        return 0;
    }

    private static void RunTrain(string cli, int ranks, string[] arguments)
    {
        var info = new ProcessStartInfo(ranks > 1 ? "mpirun" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        if (ranks > 1)
        {
            foreach (string a in (string[])["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", $"{ranks}", "dotnet"])
            {
                info.ArgumentList.Add(a);
            }
        }

        info.ArgumentList.Add(cli);
        foreach (string a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        using Process process = Process.Start(info)!;
        Task<string> error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"train ({ranks} ranks) failed with exit code {process.ExitCode}: {output} {error.Result}");
        }
    }

    private static (double TokensPerSecond, double[] Losses) ReadMetrics(string path, int warmup)
    {
        var speeds = new List<double>();
        var losses = new List<double>();
        foreach (string line in File.ReadLines(path))
        {
            using JsonDocument d = JsonDocument.Parse(line);
            JsonElement e = d.RootElement;
            if (e.GetProperty("kind").GetString() != "train")
            {
                continue;
            }

            losses.Add(e.GetProperty("loss").GetDouble());
            if (e.GetProperty("step").GetInt32() > warmup)
            {
                speeds.Add(e.GetProperty("tokens_per_second").GetDouble());
            }
        }

        return (speeds.Order().ElementAt(speeds.Count / 2), [.. losses]);
    }

    // Random torch-style Llama shapes (TorchLlamaBuilder, as the libtorch peer's make-model): the 3.95 M model of issue 7
    // and SmolLM-135M's shape (hidden 576, 30 layers, 9/3 heads, intermediate 1536, vocab 49152, tied embeddings).
    private static string MakeModel(string size, string dir, out int vocab)
    {
        LlamaConfig config = size switch
        {
            "3.95m" => new LlamaConfig { Hidden = 256, Layers = 4, Heads = 8, KvHeads = 4, Intermediate = 688, Vocab = 4096, MaxPositions = 256 },
            "135m" => new LlamaConfig { Hidden = 576, Layers = 30, Heads = 9, KvHeads = 3, Intermediate = 1536, Vocab = 49152, MaxPositions = 2048 },
            _ => throw new ArgumentException($"--size {size}: expected 3.95m or 135m"),
        };
        config = config with { Rope = RopeStyle.Interleaved, Naming = InitializerNaming.Named };
        vocab = config.Vocab;
        string path = Path.Combine(dir, $"llama-{size}.onnx");
        if (!File.Exists(path))
        {
            using Model model = TorchLlamaBuilder.Build(config);
            OnnxWriter.Save(model, path);
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"model {path}: {config.ParameterCount / 1e6:F2} M parameters"));
        return path;
    }

    // A GPT-2 byte-level BPE tokenizer.json with exactly `vocab` ids: the 256 byte symbols (every text encodes, one token
    // per byte) and unused fillers, so the random model's embedding and the tokenizer agree in size.
    private static string ByteLevelTokenizer(int vocab, string dir)
    {
        var bytes = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var chars = new List<int>(bytes);
        for (int b = 0, extra = 0; b < 256; b++)
        {
            if (!bytes.Contains(b))
            {
                bytes.Add(b);
                chars.Add(256 + extra++);
            }
        }

        var ids = new Dictionary<string, int>();
        foreach (int c in chars.Order())
        {
            ids[char.ConvertFromUtf32(c)] = ids.Count;
        }

        while (ids.Count < vocab)
        {
            ids[$"<filler_{ids.Count}>"] = ids.Count;
        }

        var json = new Dictionary<string, object?>
        {
            ["version"] = "1.0",
            ["added_tokens"] = Array.Empty<object>(),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new Dictionary<string, object> { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["decoder"] = new Dictionary<string, object> { ["type"] = "ByteLevel" },
            ["model"] = new Dictionary<string, object> { ["type"] = "BPE", ["vocab"] = ids, ["merges"] = Array.Empty<string>() },
        };
        string path = Path.Combine(dir, $"byte-level-{vocab}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(json));
        return path;
    }

    private static int Int(string[] args, string name, int fallback) =>
        BenchArgs.Option(args, name) is { } v ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
}
