using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Tools;

namespace Onnx.Lora.Bench;

/// <summary>
/// Steady memory of a long training run: stories260K (all-linear LoRA r=8, seq 64, batch 8, packing + truncate, no periodic
/// checkpoints) trains for 1,100 steps in a fresh child process, which samples its RSS, anonymous RSS, managed heap and
/// total managed allocations every 100 steps. Growth is measured from step 100 (after warm-up: arena, JIT, first
/// allocations) to step 1,100, i.e. per 1,000 steps. Live RSS includes the garbage the GC has not collected yet (its
/// gen0 budget fills and empties in a saw-tooth), so each sample is also taken again after a full compacting GC: what
/// the run really retains.
/// </summary>
internal static class TrainMemoryBenchmark
{
    public const string ChildVerb = "train-memory-child";

    public static int Run(string[] args)
    {
        var o = new ToolArgs(args);
        string dir = Path.GetFullPath(o.Maybe("dir") ?? Path.Combine("out", "bench", "train-memory"));
        int steps = o.Int("steps", 1100);
        double[] f = ChildProcess.Numbers(ChildVerb, dir, steps.ToString(CultureInfo.InvariantCulture));
        double window = steps - 100;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"steps 100 → {steps}: RSS {f[0]:F1} → {f[1]:F1} MB ({(f[1] - f[0]) * 1000 / window:+0.0;-0.0} MB per 1,000 steps), anonymous RSS {f[2]:F1} → {f[3]:F1} MB ({(f[3] - f[2]) * 1000 / window:+0.0;-0.0} MB per 1,000 steps), managed heap {f[4]:F2} → {f[5]:F2} MB; managed allocations {f[6]:F0} bytes per step"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"after a full GC at each sample: anonymous RSS {f[7]:F1} → {f[8]:F1} MB ({(f[8] - f[7]) * 1000 / window:+0.00;-0.00} MB per 1,000 steps), managed heap {f[9]:F3} → {f[10]:F3} MB ({(f[10] - f[9]) * 1000 / window:+0.000;-0.000} MB per 1,000 steps)"));
        return 0;
    }

    public static int RunChild(string[] args)
    {
        string dir = args[0];
        int steps = int.Parse(args[1], CultureInfo.InvariantCulture);
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }

        Directory.CreateDirectory(dir);
        string data = Path.Combine(dir, "train.jsonl");
        var random = new Random(1);
        string[] words = "Tom saw red birds in the big tree They sang all day Lily had a small dog named Max and they ran to the park".Split(' ');
        File.WriteAllLines(data, Enumerable.Range(0, 400).Select(_ => JsonSerializer.Serialize(new { text = string.Join(' ', Enumerable.Range(0, 40).Select(_ => words[random.Next(words.Length)])) })));
        string model = Path.Combine(RepositoryRoot.Find(), "models", "default", "stories260K");
        var options = new TrainOptions
        {
            Model = Path.Combine(model, "stories260K.bin"), Tokenizer = Path.Combine(model, "tok512.model"), Data = data, OutputDir = Path.Combine(dir, "run"),
            SeqLength = 64, BatchSize = 8, Packing = true, Truncate = true, MaxSteps = steps, LearningRate = 1e-3, Lora = new LoraConfig { Targets = ["all-linear"] }, SaveSteps = 0, IntraOpThreads = 1,
        };
        var sampler = new Sampler();
        new TrainingRunner(options, sampler).Run();
        Sample at100 = sampler.Samples[100], last = sampler.Samples[steps];
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{at100.RssMb} {last.RssMb} {at100.AnonMb} {last.AnonMb} {at100.HeapMb} {last.HeapMb} {(double)(last.Allocated - at100.Allocated) / (steps - 100)} {at100.RetainedAnonMb} {last.RetainedAnonMb} {at100.RetainedHeapMb} {last.RetainedHeapMb}"));
        return 0;
    }

    private readonly record struct Sample(double RssMb, double AnonMb, double HeapMb, long Allocated, double RetainedAnonMb, double RetainedHeapMb);

    private sealed class Sampler : ITrainingObserver
    {
        public Dictionary<int, Sample> Samples { get; } = [];

        public void OnStep(StepReport report)
        {
            if (report.Step % 100 == 0)
            {
                double rss = StatusKb("VmRSS:") / 1024.0, anon = StatusKb("RssAnon:") / 1024.0, heap = GC.GetGCMemoryInfo().HeapSizeBytes / 1e6;
                long allocated = GC.GetTotalAllocatedBytes(precise: true);
                GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
                GC.WaitForPendingFinalizers();
                GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
                var s = new Sample(rss, anon, heap, allocated, StatusKb("RssAnon:") / 1024.0, GC.GetGCMemoryInfo().HeapSizeBytes / 1e6);
                Samples[report.Step] = s;
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  step {report.Step,5}: RSS {s.RssMb,7:F1} MB  anon {s.AnonMb,7:F1} MB  managed heap {s.HeapMb,6:F2} MB  allocated {s.Allocated / 1e6,8:F2} MB  | after full GC: anon {s.RetainedAnonMb,7:F1} MB  heap {s.RetainedHeapMb,7:F3} MB"));
            }
        }

        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }

    private static long StatusKb(string key)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(key, StringComparison.Ordinal))
            {
                return long.Parse(line[key.Length..].Replace("kB", "", StringComparison.Ordinal).Trim(), CultureInfo.InvariantCulture);
            }
        }

        return 0;
    }
}
