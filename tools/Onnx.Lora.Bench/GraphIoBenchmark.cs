using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;

namespace Onnx.Lora.Bench;

/// <summary>
/// Opens and saves a 1B-parameter-shaped torch-style Llama with external data, each run in a fresh child process so
/// that its peak RSS (VmHWM) counts only that work. Target (issue 2): under 2 s and under 200 MB peak RSS.
/// </summary>
internal static class GraphIoBenchmark
{
    public const string ChildVerb = "graph-io-child";
    private const string ModelName = "llama-1b.onnx";

    // ~1.04B parameters (tied embedding; torch still exports the transposed classifier as its own tensor).
    private static readonly LlamaConfig s_config = new()
    {
        Layers = 16, Hidden = 2048, Heads = 32, KvHeads = 8, Intermediate = 8192, Vocab = 32000, MaxPositions = 2048,
        Naming = InitializerNaming.Named, Rope = RopeStyle.RotateHalf,
    };

    /// <summary>The 1B-shaped configuration (shared with the inject benchmark).</summary>
    internal static LlamaConfig Config => s_config;

    /// <summary>Builds the benchmark model into <paramref name="dir"/> unless it is there; returns its path.</summary>
    internal static string EnsureModel(string dir, bool random)
    {
        string model = Path.Combine(dir, ModelName);
        if (!File.Exists(model))
        {
            Directory.CreateDirectory(dir);
            var build = Stopwatch.StartNew();
            Console.WriteLine($"building {s_config.ParameterCount:N0}-parameter graph in {dir} ({(random ? "random" : "zero")} weights) ...");
            IWeightSource weights = random ? new RandomWeightSource(s_config.Seed) : new ZeroWeightSource();
            using Model built = TorchLlamaBuilder.Build(s_config, weights);
            OnnxWriter.Save(built, model, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
            Console.WriteLine($"built in {build.Elapsed.TotalSeconds:F1} s");
        }

        return model;
    }

    public static int Run(string[] args)
    {
        string dir = Path.GetFullPath(BenchArgs.Option(args, "--dir") ?? Path.Combine("out", "bench"));
        int runs = int.Parse(BenchArgs.Option(args, "--runs") ?? "5", CultureInfo.InvariantCulture);
        string model = EnsureModel(dir, random: args.Contains("--random"));

        long dataBytes = new FileInfo(model + ".data").Length;
        Console.WriteLine($"model: {model} ({new FileInfo(model).Length:N0} bytes) + data {dataBytes:N0} bytes");
        Measurement baseline = Child(model, "baseline");
        Console.WriteLine($"runtime baseline (child that only starts): peak RSS {baseline.PeakRssMb:F1} MB");
        Console.WriteLine("run  open_s  save_s  total_s  peak_rss_mb");
        var results = new List<Measurement>();
        for (int i = 0; i < runs; i++)
        {
            Measurement m = Child(model, "io");
            results.Add(m);
            Console.WriteLine($"{i + 1,3}  {m.OpenS,6:F3}  {m.SaveS,6:F3}  {m.TotalS,7:F3}  {m.PeakRssMb,11:F1}");
        }

        Console.WriteLine($"median  open {Median(results, m => m.OpenS):F3} s  save {Median(results, m => m.SaveS):F3} s  total {Median(results, m => m.TotalS):F3} s  peak RSS {Median(results, m => m.PeakRssMb):F1} MB");
        return 0;
    }

    public static int RunChild(string[] args)
    {
        string model = args[0];
        if (args[1] == "baseline")
        {
            Console.WriteLine($"0 0 0 {PeakRssKb()}");
            return 0;
        }

        var total = Stopwatch.StartNew();
        using Model loaded = OnnxReader.Load(model);
        double open = total.Elapsed.TotalSeconds;
        string resaved = Path.Combine(Path.GetDirectoryName(model)!, "resaved.onnx");
        OnnxWriter.Save(loaded, resaved, new SaveOptions { ExternalData = ExternalDataMode.Keep });
        double all = total.Elapsed.TotalSeconds;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{open} {all - open} {all} {PeakRssKb()}"));
        return 0;
    }

    private static Measurement Child(string model, string mode)
    {
        double[] f = ChildProcess.Numbers(ChildVerb, model, mode);
        return new Measurement(f[0], f[1], f[2], f[3] / 1024);
    }

    private static long PeakRssKb()
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line["VmHWM:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }

    private static double Median(List<Measurement> results, Func<Measurement, double> pick)
    {
        double[] sorted = results.Select(pick).Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private readonly record struct Measurement(double OpenS, double SaveS, double TotalS, double PeakRssMb);
}
