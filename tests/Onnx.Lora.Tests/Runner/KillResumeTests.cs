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
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Train_KilledWithSigkillThenResumed_MetricsEqualUninterruptedRunExactly()
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 16).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds in the big tree. They sang all day." })));
        string model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        string tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");
        const int Steps = 300;
        string[] flags = ["--model", model, "--tokenizer", tokenizer, "--data", data, "--seq-length", "32", "--batch-size", "4", "--max-steps", $"{Steps}",
            "--learning-rate", "2e-3", "--lora-targets", "all-linear", "--save-steps", "20", "--save-total-limit", "2", "--intra-op-threads", "1", "--seed", "3"];

        // The killed run: a separate process, SIGKILLed as soon as its first checkpoint exists.
        string killedDir = dir.File("killed");
        string cli = Path.Combine(AppContext.BaseDirectory, "onnx-lora.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])[cli, "train", .. flags, "--output-dir", killedDir])
        {
            start.ArgumentList.Add(a);
        }

        using (Process process = Process.Start(start)!)
        {
            process.OutputDataReceived += (_, _) => { };
            process.ErrorDataReceived += (_, _) => { };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var clock = Stopwatch.StartNew();
            while (CheckpointStore.FindLatest(Path.Combine(killedDir, "checkpoints")) is null && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
            {
                Thread.Sleep(5);
            }

            Thread.Sleep(40); // a few steps past the checkpoint, so the resume must also drop metrics lines the dead run wrote
            Assert.IsFalse(process.HasExited, $"the run ended (exit {(process.HasExited ? process.ExitCode : 0)}) before it could be killed");
            process.Kill(entireProcessTree: true); // SIGKILL on Unix: no handler runs.
            process.WaitForExit();
        }

        string killedAt = Path.GetFileName(CheckpointStore.FindLatest(Path.Combine(killedDir, "checkpoints")))!;
        int linesBeforeResume = File.ReadLines(Path.Combine(killedDir, "metrics.jsonl")).Count();
        TestContext.WriteLine($"killed after {linesBeforeResume} metric lines; latest checkpoint {killedAt}");

        TrainOptions options = TrainOptionsLoader.Load(null, Pairs(flags));
        TrainingSummary resumed = new TrainingRunner(options with { OutputDir = killedDir, Resume = "latest" }).Run(TestContext.CancellationToken);
        TrainingSummary full = new TrainingRunner(options with { OutputDir = dir.File("full") }).Run(TestContext.CancellationToken);

        string[] expected = File.ReadLines(full.MetricsFile).Select(StripTimings).ToArray();
        string[] actual = File.ReadLines(resumed.MetricsFile).Select(StripTimings).ToArray();
        Assert.HasCount(Steps, expected);
        CollectionAssert.AreEqual(expected, actual, "losses, learning rates, gradient norms and tokens must be identical");
        CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(full.AdapterDir!, "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(resumed.AdapterDir!, "adapter_model.safetensors")));
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
