using System.Diagnostics;
using System.Text.Json;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Runner;

/// <summary>A real <c>onnx-lora train</c> process killed with SIGKILL mid-run, resumed, must match an uninterrupted run.</summary>
[TestClass]
public sealed class KillResumeTests
{
    private static readonly string s_model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Train_KilledWithSigkillThenResumed_MetricsEqualUninterruptedRunExactly()
    {
        using var dir = new TempDir();
        const int Steps = 300;
        string[] flags = Flags(dir, Steps, saveSteps: 20);

        // The killed run: a separate process, SIGKILLed as soon as its first checkpoint exists.
        string killedDir = dir.File("killed");
        using (Process process = StartTrain(flags, killedDir, resume: false))
        {
            var clock = Stopwatch.StartNew();
            while (CheckpointStore.FindLatest(Path.Combine(killedDir, "checkpoints")) is null && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
            {
                Thread.Sleep(5);
            }

            Thread.Sleep(40); // a few steps past the checkpoint, so the resume must also drop metrics lines the dead run wrote
            Kill(process);
        }

        string killedAt = Path.GetFileName(CheckpointStore.FindLatest(Path.Combine(killedDir, "checkpoints")))!;
        int linesBeforeResume = File.ReadLines(Path.Combine(killedDir, "metrics.jsonl")).Count();
        TestContext.WriteLine($"killed after {linesBeforeResume} metric lines; latest checkpoint {killedAt}");

        AssertResumeEqualsUninterrupted(dir, flags, killedDir, Steps);
    }

    [TestMethod]
    public void Train_KilledThreeTimesAtSeededMoments_ResumesToTheUninterruptedResultExactly()
    {
        // Three SIGKILLs of one run, each followed by `--resume latest`: (1) before the first checkpoint, so the
        // restart must start over; (2) at the n-th file created inside a checkpoint being written; (3) after a seeded
        // number of further steps. Then the run finishes and must equal an uninterrupted one bit for bit.
        var random = new Random(20240611);
        using var dir = new TempDir();
        const int Steps = 120;
        string[] flags = Flags(dir, Steps, saveSteps: 10);
        string run = dir.File("killed");
        string checkpoints = Path.Combine(run, "checkpoints");

        int firstKillLine = 1 + random.Next(3);
        using (Process process = StartTrain(flags, run, resume: false))
        {
            WaitUntil(process, () => MetricLines(run) >= firstKillLine);
            Kill(process);
        }

        Assert.IsNull(CheckpointStore.FindLatest(checkpoints), "kill 1 was meant to land before the first checkpoint");
        TestContext.WriteLine($"kill 1: after {MetricLines(run)} metric lines, no checkpoint yet");

        int checkpointEvent = 1 + random.Next(12);
        Assert.IsTrue(CliProcess.KillAtFileEvent(["train", .. flags, "--output-dir", run, "--resume", "latest"], run, checkpointEvent,
            path => path.Contains($"{Path.DirectorySeparatorChar}.checkpoint-", StringComparison.Ordinal)), "the run ended before kill 2");

        string? torn = Directory.Exists(checkpoints) ? Directory.EnumerateDirectories(checkpoints, ".checkpoint-*").FirstOrDefault() : null;
        TestContext.WriteLine($"kill 2: at checkpoint file event #{checkpointEvent}; latest {Path.GetFileName(CheckpointStore.FindLatest(checkpoints))}; torn {(torn is null ? "none" : Path.GetFileName(torn))}");

        int lastStep = MetricLines(run);
        int thirdKillLine = lastStep + 1 + random.Next(30);
        using (Process process = StartTrain(flags, run, resume: true))
        {
            WaitUntil(process, () => MetricLines(run) >= thirdKillLine);
            Kill(process);
        }

        TestContext.WriteLine($"kill 3: at step {MetricLines(run)}; latest {Path.GetFileName(CheckpointStore.FindLatest(checkpoints))}");
        AssertResumeEqualsUninterrupted(dir, flags, run, Steps);
    }

    [TestMethod]
    [DataRow("INT", 20261203)]
    [DataRow("TERM", 20261204)]
    public void Train_SignalledAtSeededStep_Exits130WithCheckpointAndResumesExactly(string signal, int seed)
    {
        // SIGINT / SIGTERM (not SIGKILL): the run must stop at the end of its step, save a checkpoint of that step and
        // exit 130; `--resume latest` then continues to the uninterrupted result bit for bit.
        var random = new Random(seed);
        using var dir = new TempDir();
        const int Steps = 120;
        string[] flags = Flags(dir, Steps, saveSteps: 50);
        string run = dir.File("signalled");
        int line = 3 + random.Next(40);
        using (Process process = StartTrain(flags, run, resume: false))
        {
            WaitUntil(process, () => MetricLines(run) >= line);
            Assert.IsFalse(process.HasExited, "the run ended before the signal");
            // The shell's built-in kill: a fresh CI machine may lack /bin/kill (procps).
            using (Process kill = Process.Start("sh", ["-c", $"kill -{signal} {process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)}"]))
            {
                kill.WaitForExit();
            }

            Assert.IsTrue(process.WaitForExit(TimeSpan.FromSeconds(60)), "the run did not stop within 60 s of SIG" + signal);
            Assert.AreEqual(130, process.ExitCode, "SIG" + signal);
        }

        string? latest = CheckpointStore.FindLatest(Path.Combine(run, "checkpoints"));
        Assert.IsNotNull(latest, "no checkpoint after SIG" + signal);
        Assert.AreEqual($"checkpoint-{MetricLines(run)}", Path.GetFileName(latest), "the checkpoint is not of the last completed step");
        TestContext.WriteLine($"SIG{signal} after {line}+ metric lines → {Path.GetFileName(latest)}");

        AssertResumeEqualsUninterrupted(dir, flags, run, Steps);
    }

    private void AssertResumeEqualsUninterrupted(TempDir dir, string[] flags, string killedDir, int steps)
    {
        TrainOptions options = TrainOptionsLoader.Load(null, Pairs(flags));
        TrainingSummary resumed = new TrainingRunner(options with { OutputDir = killedDir, Resume = "latest" }).Run(TestContext.CancellationToken);
        TrainingSummary full = new TrainingRunner(options with { OutputDir = dir.File("full") }).Run(TestContext.CancellationToken);

        string[] expected = File.ReadLines(full.MetricsFile).Select(StripTimings).ToArray();
        string[] actual = File.ReadLines(resumed.MetricsFile).Select(StripTimings).ToArray();
        Assert.HasCount(steps, expected);
        CollectionAssert.AreEqual(expected, actual, "losses, learning rates, gradient norms and tokens must be identical");
        CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(full.AdapterDir!, "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(resumed.AdapterDir!, "adapter_model.safetensors")));
    }

    private static string[] Flags(TempDir dir, int steps, int saveSteps)
    {
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 16).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds in the big tree. They sang all day." })));
        return ["--model", s_model, "--tokenizer", s_tokenizer, "--data", data, "--seq-length", "32", "--batch-size", "4", "--max-steps", $"{steps}",
            "--learning-rate", "2e-3", "--lora-targets", "all-linear", "--save-steps", $"{saveSteps}", "--save-total-limit", "2", "--intra-op-threads", "1", "--seed", "3"];
    }

    private static Process StartTrain(string[] flags, string outputDir, bool resume) =>
        CliProcess.Start(["train", .. flags, "--output-dir", outputDir, .. resume ? (string[])["--resume", "latest"] : []]);

    private static void WaitUntil(Process process, Func<bool> condition)
    {
        var clock = Stopwatch.StartNew();
        while (!condition() && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            Thread.Sleep(2);
        }
    }

    private static void Kill(Process process)
    {
        Assert.IsFalse(process.HasExited, $"the run ended (exit {(process.HasExited ? process.ExitCode : 0)}) before it could be killed");
        process.Kill(entireProcessTree: true); // SIGKILL on Unix: no handler runs.
        process.WaitForExit();
    }

    // Complete lines only: a line cut by the kill does not count.
    private static int MetricLines(string run)
    {
        string path = Path.Combine(run, "metrics.jsonl");
        if (!File.Exists(path))
        {
            return 0;
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        int lines = 0;
        int b;
        while ((b = stream.ReadByte()) >= 0)
        {
            lines += b == '\n' ? 1 : 0;
        }

        return lines;
    }

    private static IEnumerable<KeyValuePair<string, string>> Pairs(string[] flags)
    {
        for (int i = 0; i < flags.Length; i += 2)
        {
            yield return KeyValuePair.Create(flags[i][2..], flags[i + 1]);
        }
    }

    // Everything but wall-clock fields (tokens/s, elapsed) must match bit for bit.
    private static string StripTimings(string line)
    {
        using JsonDocument d = JsonDocument.Parse(line);
        return string.Join(",", d.RootElement.EnumerateObject().Where(p => p.Name is not ("tokens_per_second" or "elapsed_seconds")).Select(p => $"{p.Name}={p.Value.GetRawText()}"));
    }
}
