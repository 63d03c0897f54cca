using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;

namespace Onnx.Lora.Bench;

/// <summary>
/// Peak RSS of load, inject and merge on a model whose one node carries a huge string attribute (issue 15: 300 MB cost
/// 1.3–1.9 GB). Each stage runs in a fresh child process and reports its own VmHWM; the target is ≤ 1.3× the file size.
/// </summary>
internal static class AttributeMemoryBenchmark
{
    public const string ChildVerb = "attr-memory-child";

    public static int Run(string[] args)
    {
        string dir = Path.GetFullPath(BenchArgs.Option(args, "--dir") ?? Path.Combine("out", "bench", "attr-memory"));
        int megabytes = int.Parse(BenchArgs.Option(args, "--mb") ?? "300", CultureInfo.InvariantCulture);
        Directory.CreateDirectory(dir);
        string basePath = Path.Combine(dir, "base.onnx"), lora = Path.Combine(dir, "lora.onnx"), merged = Path.Combine(dir, "merged.onnx");
        double[] build = ChildProcess.Numbers(ChildVerb, "build", basePath, megabytes.ToString(CultureInfo.InvariantCulture));
        double fileMb = new FileInfo(basePath).Length / 1048576.0;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"model: {basePath}, {fileMb:F1} MB (one {megabytes} MB string attribute); each stage in a fresh child (VmHWM)"));
        Console.WriteLine("stage    seconds  peak_rss_mb  peak/file");
        bool ok = true;
        foreach ((string stage, string input, string output) in new[] { ("load", basePath, string.Empty), ("inject", basePath, lora), ("merge", lora, merged) })
        {
            double[] f = ChildProcess.Numbers(ChildVerb, stage, input, output);
            double peakMb = f[1] / 1024, ratio = peakMb / fileMb;
            ok &= ratio <= 1.3;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{stage,-7}  {f[0],7:F2}  {peakMb,11:F1}  {ratio,9:F2}"));
        }

        Console.WriteLine(ok ? "every stage within 1.3× the file size" : "OVER: a stage needs more than 1.3× the file size");
        return build.Length > 0 && ok ? 0 : 1;
    }

    public static int RunChild(string[] args)
    {
        var clock = Stopwatch.StartNew();
        switch (args[0])
        {
            case "build":
                using (Model model = Build(int.Parse(args[2], CultureInfo.InvariantCulture)))
                {
                    OnnxWriter.Save(model, args[1], new SaveOptions { ExternalData = ExternalDataMode.Inline });
                }

                break;
            case "load":
                using (Model model = OnnxReader.Load(args[1]))
                {
                    GC.KeepAlive(model);
                }

                break;
            case "inject":
                using (Model model = OnnxReader.Load(args[1]))
                {
                    LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
                    OnnxWriter.Save(model, args[2]);
                }

                break;
            case "merge":
                LoraMerger.Merge(args[1], args[2]);
                break;
            default:
                throw new ArgumentException($"unknown stage '{args[0]}'");
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{clock.Elapsed.TotalSeconds} {PeakRssKb()}"));
        return 0;
    }

    // y = x·W (a q_proj-named MatMul inject can target) whose node also carries a string attribute of the given size.
    private static Model Build(int megabytes)
    {
        var b = new GraphBuilder("main", 17);
        Value x = b.Input("x", DataType.Float, 2, 16);
        Value w = b.Floats("model.layers.0.self_attn.q_proj.weight", [16, 16], Enumerable.Range(0, 256).Select(i => i * 0.01f).ToArray());
        Value y = b.MatMul(x, w, "/model/layers.0/self_attn/q_proj/MatMul");
        byte[] blob = new byte[megabytes << 20];
        blob.AsSpan().Fill((byte)'a');
        y.Producer!.Attributes.Add("blob", Attr.Bytes("blob", blob));
        b.Output(y, "y", DataType.Float, 2, 16);
        return b.Model;
    }

    private static long PeakRssKb()
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line["VmHWM:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
    }
}
