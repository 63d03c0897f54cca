using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;

namespace Onnx.Lora.Bench;

/// <summary>
/// Two measurements in one run:
/// 1. Inference latency through ORT (CPU, one intra-op thread, full graph optimizations) of a small torch-style Llama:
///    base, merged (must be the base graph: ratio ≈ 1.00), LoRA unmerged (r=16 branches), and the serving model with
///    an .onnx_adapter active through RunOptions. The models run interleaved, round by round, so drift hits all alike;
///    medians per model and ratios to base.
/// 2. Merge of the 1B-shaped external-data Llama (all-linear r=16, random B) in a fresh child per run: wall time,
///    throughput (output data bytes / s), peak RSS (VmHWM), against a plain copy of the same data file in the same run.
/// </summary>
internal static class MergeBenchmark
{
    public const string ChildVerb = "merge-child";

    private static readonly LlamaConfig s_small = new()
    {
        Layers = 4, Hidden = 512, Heads = 8, KvHeads = 4, Intermediate = 1536, Vocab = 8000, MaxPositions = 256,
        Naming = InitializerNaming.Named,
    };

    public static int Run(string[] args)
    {
        string dir = Path.GetFullPath(BenchArgs.Option(args, "--dir") ?? Path.Combine("out", "bench"));
        int rounds = int.Parse(BenchArgs.Option(args, "--rounds") ?? "30", CultureInfo.InvariantCulture);
        int runs = int.Parse(BenchArgs.Option(args, "--runs") ?? "3", CultureInfo.InvariantCulture);
        Directory.CreateDirectory(dir);
        if (!args.Contains("--skip-latency"))
        {
            Latency(Path.Combine(dir, "merge-latency"), rounds);
        }

        if (!args.Contains("--skip-large"))
        {
            LargeMerge(dir, runs);
        }

        return 0;
    }

    private static void Latency(string dir, int rounds)
    {
        Directory.CreateDirectory(dir);
        string basePath = Path.Combine(dir, "base.onnx"), loraPath = Path.Combine(dir, "lora.onnx"), mergedPath = Path.Combine(dir, "merged.onnx");
        using (Model model = TorchLlamaBuilder.Build(s_small))
        {
            OnnxWriter.Save(model, basePath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 16, Alpha = 32 });
            RandomizeB(model, manifest, seed: 1);
            OnnxWriter.Save(model, loraPath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        }

        LoraMerger.Merge(loraPath, mergedPath);
        ServingExportReport serving = ServingExport.Export(loraPath, new ServingExportOptions { OutputFolder = Path.Combine(dir, "serving") });
        string adapterPath = serving.AdapterPaths[ServingExport.DefaultAdapterName];

        Console.WriteLine($"latency: torch-style Llama {s_small.ParameterCount:N0} params ({s_small.Layers} layers, hidden {s_small.Hidden}), input_ids [1, 64], all-linear LoRA r=16; ORT CPU, 1 thread, ORT_ENABLE_ALL; {rounds} interleaved rounds");
        using var adapter = OrtLoraAdapter.Create(adapterPath, null);
        using var adapterOptions = new RunOptions();
        adapterOptions.AddActiveLoraAdapter(adapter);
        var models = new (string Name, string Path, RunOptions? Options)[]
        {
            ("base", basePath, null), ("merged", mergedPath, null), ("lora-unmerged", loraPath, null), ("slots+adapter", serving.ModelPath, adapterOptions),
        };
        var sessions = models.Select(m => Open(m.Path)).ToArray();
        try
        {
            var feeds = sessions.Select(s => Inputs(s, 64)).ToArray();
            var times = models.Select(_ => new List<double>()).ToArray();
            for (int warm = 0; warm < 3; warm++)
            {
                for (int i = 0; i < models.Length; i++)
                {
                    Time(sessions[i], feeds[i], models[i].Options);
                }
            }

            for (int r = 0; r < rounds; r++)
            {
                for (int j = 0; j < models.Length; j++)
                {
                    int i = (j + r) % models.Length; // Rotate the order so no model always runs first.
                    times[i].Add(Time(sessions[i], feeds[i], models[i].Options));
                }
            }

            double baseMedian = Median(times[0]);
            for (int i = 0; i < models.Length; i++)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {models[i].Name,-14} median {Median(times[i]):F2} ms   ratio to base {Median(times[i]) / baseMedian:F3}"));
            }

            double merged = Median(times[1]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  slots+adapter / merged {Median(times[3]) / merged:F3}; lora-unmerged / merged {Median(times[2]) / merged:F3}"));

            // Adapter switch: a new adapter object and RunOptions, then one run (what changing the active adapter costs).
            var switches = new List<double>();
            for (int s = 0; s < 10; s++)
            {
                var clock = Stopwatch.StartNew();
                using var other = OrtLoraAdapter.Create(adapterPath, null);
                using var options = new RunOptions();
                options.AddActiveLoraAdapter(other);
                using var results = sessions[3].Run(feeds[3], sessions[3].OutputNames, options);
                switches.Add(clock.Elapsed.TotalMilliseconds);
            }

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  adapter switch (load {new FileInfo(adapterPath).Length / 1e6:F1} MB adapter + new RunOptions + one run) median {Median(switches):F2} ms vs steady run {Median(times[3]):F2} ms"));
        }
        finally
        {
            foreach (InferenceSession s in sessions)
            {
                s.Dispose();
            }
        }
    }

    private static void LargeMerge(string dir, int runs)
    {
        string model = GraphIoBenchmark.EnsureModel(dir, random: false);
        string lora = Path.Combine(dir, "llama-1b-lora-random.onnx");
        if (!File.Exists(lora))
        {
            using Model loaded = OnnxReader.Load(model);
            LoraManifest manifest = LoraInjector.Inject(loaded, new LoraOptions { Rank = 16, Alpha = 32 });
            RandomizeB(loaded, manifest, seed: 2);
            OnnxWriter.Save(loaded, lora, new SaveOptions { ExternalData = ExternalDataMode.Keep });
        }

        long bytes = new FileInfo(model + ".data").Length;
        Console.WriteLine($"large merge: {GraphIoBenchmark.Config.ParameterCount:N0}-parameter torch-style Llama, external data {bytes:N0} bytes, all-linear r=16 (random B); fresh child per run");
        Console.WriteLine("run  merge_s  merge_MB/s  peak_rss_mb  peak_anon_mb  copy_s  copy_MB/s   (base weights are read with positioned reads, not kept mapped)");
        var merges = new List<double>();
        var copies = new List<double>();
        var rss = new List<double>();
        var anon = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            double[] f = ChildProcess.Numbers(ChildVerb, lora);
            string copyTarget = Path.Combine(dir, "copy.data");
            var clock = Stopwatch.StartNew();
            File.Copy(model + ".data", copyTarget, overwrite: true);
            using (var stream = new FileStream(copyTarget, FileMode.Open, FileAccess.ReadWrite))
            {
                stream.Flush(flushToDisk: true); // The merge's atomic writer fsyncs; so must the copy.
            }

            double copy = clock.Elapsed.TotalSeconds;
            File.Delete(copyTarget);
            merges.Add(f[0]);
            rss.Add(f[2] / 1024);
            anon.Add(f[3] / 1024);
            copies.Add(copy);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{i + 1,3}  {f[0],7:F2}  {f[1] / 1e6 / f[0],10:F0}  {f[2] / 1024,11:F1}  {f[3] / 1024,12:F1}  {copy,6:F2}  {bytes / 1e6 / copy,9:F0}"));
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median merge {Median(merges):F2} s ({bytes / 1e6 / Median(merges):F0} MB/s), plain copy {Median(copies):F2} s ({bytes / 1e6 / Median(copies):F0} MB/s), merge/copy time {Median(merges) / Median(copies):F2}×, peak RSS {Median(rss):F1} MB (anonymous {Median(anon):F1} MB; largest weight {LargestWeightMb():F1} MB fp32)"));
        File.Delete(Path.Combine(dir, "llama-1b-merged.onnx"));
        File.Delete(Path.Combine(dir, "llama-1b-merged.onnx.data"));
    }

    public static int RunChild(string[] args)
    {
        string lora = args[0];
        string merged = Path.Combine(Path.GetDirectoryName(lora)!, "llama-1b-merged.onnx");

        // VmHWM counts the pages of memory-mapped weight files the merge reads (file-backed, reclaimable page cache);
        // RssAnon is the process's own memory. Linux keeps no peak of RssAnon, so sample it.
        long peakAnon = 0;
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                peakAnon = Math.Max(peakAnon, StatusKb("RssAnon:"));
                await Task.Delay(10).ConfigureAwait(false);
            }
        });
        var clock = Stopwatch.StartNew();
        LoraMerger.Merge(lora, merged);
        double seconds = clock.Elapsed.TotalSeconds;
        stop.Cancel();
        sampler.Wait();
        peakAnon = Math.Max(peakAnon, StatusKb("RssAnon:"));
        long written = new FileInfo(merged + ".data").Length;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{seconds} {written} {StatusKb("VmHWM:")} {peakAnon}"));
        return 0;
    }

    private static double LargestWeightMb() =>
        Math.Max((long)GraphIoBenchmark.Config.Vocab * GraphIoBenchmark.Config.Hidden, (long)GraphIoBenchmark.Config.Intermediate * GraphIoBenchmark.Config.Hidden) * 4 / 1e6;

    private static void RandomizeB(Model model, LoraManifest manifest, int seed)
    {
        var rng = new Random(seed);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            var b = new float[m.Rank * m.OutFeatures];
            for (int i = 0; i < b.Length; i++)
            {
                b[i] = (float)((rng.NextDouble() - 0.5) * 0.02);
            }

            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], b));
        }
    }

    private static InferenceSession Open(string path)
    {
        using var options = new SessionOptions
        {
            IntraOpNumThreads = 1, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR, // Slot initializers that are also inputs warn once each.
        };
        return new InferenceSession(path, options);
    }

    private static List<NamedOnnxValue> Inputs(InferenceSession session, int sequence)
    {
        var rng = new Random(5);
        var inputs = new List<NamedOnnxValue>();
        foreach ((string name, NodeMetadata meta) in session.InputMetadata)
        {
            if (meta.ElementType != typeof(long))
            {
                continue; // Adapter slots keep their r = 0 defaults unless an adapter is active.
            }

            long[] data = Enumerable.Range(0, sequence).Select(i => name.Contains("mask", StringComparison.Ordinal) ? 1L : name.Contains("position", StringComparison.Ordinal) ? i : rng.Next(0, s_small.Vocab)).ToArray();
            inputs.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(data, [1, sequence])));
        }

        return inputs;
    }

    private static double Time(InferenceSession session, List<NamedOnnxValue> feeds, RunOptions? options)
    {
        var clock = Stopwatch.StartNew();
        using var results = options is null ? session.Run(feeds) : session.Run(feeds, session.OutputNames, options);
        return clock.Elapsed.TotalMilliseconds;
    }

    private static long StatusKb(string key)
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(key, StringComparison.Ordinal));
        return long.Parse(line[key.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }

    private static double Median(List<double> values)
    {
        double[] sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
