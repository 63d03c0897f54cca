using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;

namespace Onnx.Lora.Bench;

/// <summary>
/// Loads the 1B-shaped torch-style Llama (external data), injects all-linear r=16 LoRA and saves it next to the base
/// (external data kept, LoRA tensors inline), each run in a fresh child process for its own peak RSS (VmHWM).
/// Target (issue 3): under 2 s and under 200 MB peak RSS. Plain LoRA reads no weight bytes.
/// </summary>
internal static class InjectBenchmark
{
    public const string ChildVerb = "inject-child";

    public static int Run(string[] args)
    {
        string dir = Path.GetFullPath(BenchArgs.Option(args, "--dir") ?? Path.Combine("out", "bench"));
        int runs = int.Parse(BenchArgs.Option(args, "--runs") ?? "5", CultureInfo.InvariantCulture);
        string model = GraphIoBenchmark.EnsureModel(dir, random: false);
        Console.WriteLine($"model: {model} + data {new FileInfo(model + ".data").Length:N0} bytes; inject all-linear r=16");
        Console.WriteLine("run  load_s  inject_s  save_s  total_s  peak_rss_mb  modules  lora_params");
        var totals = new List<double>();
        var rss = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            double[] f = ChildProcess.Numbers(ChildVerb, model);
            totals.Add(f[3]);
            rss.Add(f[4] / 1024);
            Console.WriteLine($"{i + 1,3}  {f[0],6:F3}  {f[1],8:F3}  {f[2],6:F3}  {f[3],7:F3}  {f[4] / 1024,11:F1}  {f[5],7}  {f[6],11:N0}");
        }

        Console.WriteLine($"median total {Median(totals):F3} s, peak RSS {Median(rss):F1} MB");
        return 0;
    }

    public static int RunChild(string[] args)
    {
        string model = args[0];
        var clock = Stopwatch.StartNew();
        using Model loaded = OnnxReader.Load(model);
        double load = clock.Elapsed.TotalSeconds;
        LoraManifest manifest = LoraInjector.Inject(loaded, new LoraOptions { Rank = 16, Alpha = 32 });
        double inject = clock.Elapsed.TotalSeconds - load;
        OnnxWriter.Save(loaded, Path.Combine(Path.GetDirectoryName(model)!, "llama-1b-lora.onnx"), new SaveOptions { ExternalData = ExternalDataMode.Keep });
        double total = clock.Elapsed.TotalSeconds;
        long loraParams = manifest.Modules.Sum(m => m.Rank * (m.InFeatures + m.OutFeatures));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{load} {inject} {total - load - inject} {total} {PeakRssKb()} {manifest.Modules.Count} {loraParams}"));
        return 0;
    }

    private static long PeakRssKb()
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line["VmHWM:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }

    private static double Median(List<double> values)
    {
        double[] sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
