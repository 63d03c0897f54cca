using System.Diagnostics;
using System.Text.Json;
using Onnx.Lora.Formats;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Distributed;

/// <summary>
/// <c>mpirun -np 2 onnx-lora train</c> (Open MPI, one thread per rank) against one ordinary process. These tests FAIL
/// when mpirun is missing (CI installs it); <c>ONNX_LORA_SKIP_MPI_TESTS=1</c> skips them locally.
/// </summary>
[TestClass]
[DoNotParallelize] // Two ranks plus a reference run already fill a 2-core machine.
public sealed class MpiTrainingTests
{
    private const double Tolerance = 1e-5; // Relative for losses and norms, absolute for adapter weights.
    private static readonly TimeSpan s_timeout = TimeSpan.FromMinutes(4);
    private static readonly string s_model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Train_TwoRanksOfBatch4_EqualOneProcessOfBatch8()
    {
        MpiJob.RequireMpirun();
        using var dir = new TempDir();
        // Gradient accumulation, eval, and 19 rows (an epoch ends with a short global batch that leaves rank 1 empty).
        string[] flags = [.. Flags(dir, steps: 8), "--gradient-accumulation-steps", "2", "--eval-data", EvalData(dir), "--eval-steps", "4"];
        TrainingSummary one = new TrainingRunner(Load([.. flags, "--batch-size", "8", "--output-dir", dir.File("one")])).Run(TestContext.CancellationToken);

        (int code, string log) = MpiJob.Run(2, ["train", .. flags, "--batch-size", "4", "--output-dir", dir.File("two")], dir.File("mpi.log"), s_timeout);
        Assert.AreEqual(0, code, log);
        StringAssert.Contains(log, "(2 ranks)", "the progress line names the ranks");

        AssertMetricsClose(one.MetricsFile, Path.Combine(dir.File("two"), TrainingRunner.MetricsFile), expectedLines: 8 + 3);
        AssertAdaptersClose(one.AdapterDir!, Path.Combine(dir.File("two"), TrainingRunner.AdapterFolder));
    }

    [TestMethod]
    public void Train_RankKilled_JobEndsWithinTenSecondsAndResumeEqualsTheUninterruptedRun()
    {
        MpiJob.RequireMpirun();
        using var dir = new TempDir();
        const int Steps = 30;
        string[] flags = [.. Flags(dir, Steps), "--batch-size", "4", "--save-steps", "5", "--save-total-limit", "2"];
        string killed = dir.File("killed");
        string checkpoints = Path.Combine(killed, "checkpoints");

        Process job = MpiJob.Start(2, ["train", .. flags, "--output-dir", killed], dir.File("killed.log"));
        var clock = Stopwatch.StartNew();
        while (!job.HasExited && clock.Elapsed < s_timeout && !(CheckpointStore.FindLatest(checkpoints) is { } latest && latest.EndsWith("-10", StringComparison.Ordinal)))
        {
            Thread.Sleep(10);
        }

        Assert.IsFalse(job.HasExited, $"the job ended before it could be killed: {MpiJob.ReadShared(dir.File("killed.log"))}");
        Dictionary<int, int> ranks = MpiJob.RankProcesses(job);
        Assert.IsTrue(ranks.ContainsKey(1), $"rank 1 not found among mpirun's children ({string.Join(",", ranks)})");
        using (Process rank1 = Process.GetProcessById(ranks[1]))
        {
            rank1.Kill(); // SIGKILL: no handler runs.
        }

        var sinceKill = Stopwatch.StartNew();
        bool ended = job.WaitForExit(TimeSpan.FromSeconds(10));
        double seconds = sinceKill.Elapsed.TotalSeconds;
        if (!ended)
        {
            job.Kill(entireProcessTree: true);
        }

        (int code, string log) = MpiJob.Wait(job, dir.File("killed.log"), s_timeout);
        TestContext.WriteLine($"job ended {seconds:F2} s after rank 1 was killed, exit {code}");
        Assert.IsTrue(ended, $"the job was still running 10 s after a rank was killed: {log}");
        Assert.AreNotEqual(0, code, log);
        string last = CheckpointStore.FindLatest(checkpoints)!;
        Assert.IsNotNull(CheckpointStore.Load(last), "the last checkpoint is intact");

        (code, log) = MpiJob.Run(2, ["train", .. flags, "--output-dir", killed, "--resume", "latest"], dir.File("resumed.log"), s_timeout);
        Assert.AreEqual(0, code, log);
        (code, log) = MpiJob.Run(2, ["train", .. flags, "--output-dir", dir.File("full")], dir.File("full.log"), s_timeout);
        Assert.AreEqual(0, code, log);

        string[] expected = File.ReadLines(Path.Combine(dir.File("full"), TrainingRunner.MetricsFile)).Select(StripTimings).ToArray();
        string[] actual = File.ReadLines(Path.Combine(killed, TrainingRunner.MetricsFile)).Select(StripTimings).ToArray();
        Assert.HasCount(Steps, expected);
        CollectionAssert.AreEqual(expected, actual, "a resume with the same number of ranks is bit-identical");
        CollectionAssert.AreEqual(File.ReadAllBytes(AdapterFile(dir.File("full"))), File.ReadAllBytes(AdapterFile(killed)));
    }

    [TestMethod]
    public void Train_RankFrozen_HeartbeatEndsTheJobWithinTenSeconds()
    {
        // SIGSTOP is what a lost machine looks like to the others: no exit, no error, just silence (mpirun sees nothing).
        MpiJob.RequireMpirun();
        using var dir = new TempDir();
        string[] flags = [.. Flags(dir, steps: 400), "--batch-size", "4", "--save-steps", "5"];
        string run = dir.File("run");
        Process job = MpiJob.Start(2, ["train", .. flags, "--output-dir", run], dir.File("mpi.log"), new Dictionary<string, string> { ["ONNX_LORA_HEARTBEAT_TIMEOUT"] = "4" });
        var clock = Stopwatch.StartNew();
        while (!job.HasExited && clock.Elapsed < s_timeout && CheckpointStore.FindLatest(Path.Combine(run, "checkpoints")) is null)
        {
            Thread.Sleep(10);
        }

        Assert.IsFalse(job.HasExited, $"the job ended before rank 1 could be frozen: {MpiJob.ReadShared(dir.File("mpi.log"))}");
        int rank1 = MpiJob.RankProcesses(job)[1];
        using (Process stop = Process.Start("kill", ["-STOP", $"{rank1}"]))
        {
            stop.WaitForExit();
        }

        var sinceStop = Stopwatch.StartNew();
        bool ended = job.WaitForExit(TimeSpan.FromSeconds(10));
        double seconds = sinceStop.Elapsed.TotalSeconds;
        if (!ended)
        {
            job.Kill(entireProcessTree: true);
        }

        try
        {
            using Process frozen = Process.GetProcessById(rank1);
            frozen.Kill(); // mpirun normally has; never leave a stopped process behind.
        }
        catch (ArgumentException)
        {
        }

        (int code, string log) = MpiJob.Wait(job, dir.File("mpi.log"), s_timeout);
        TestContext.WriteLine($"job ended {seconds:F2} s after rank 1 was frozen, exit {code}");
        Assert.IsTrue(ended, $"the job was still running 10 s after rank 1 froze: {log}");
        Assert.AreEqual(9, code, log); // ExitCodes.RankLost
        StringAssert.Contains(log, "rank 0 of 2: rank 1 has not been heard from for 4 s");
        Assert.IsNotNull(CheckpointStore.Load(CheckpointStore.FindLatest(Path.Combine(run, "checkpoints"))!), "the last checkpoint is intact");
    }

    [TestMethod]
    public void Train_ResumedByOneProcessWithTheSameGlobalBatch_ContinuesTheTwoRankRun()
    {
        MpiJob.RequireMpirun();
        using var dir = new TempDir();
        const int Steps = 12;
        string[] flags = [.. Flags(dir, Steps), "--save-steps", "6"];
        string two = dir.File("two");
        (int code, string log) = MpiJob.Run(2, ["train", .. flags, "--batch-size", "4", "--output-dir", two], dir.File("two.log"), s_timeout);
        Assert.AreEqual(0, code, log);

        // A copy of the run as it stood at checkpoint 6, continued by one process with batch 8 = 2 ranks × 4.
        string one = dir.File("one");
        CopyDirectory(Path.Combine(two, "checkpoints", "checkpoint-6"), Path.Combine(one, "checkpoints", "checkpoint-6"));
        File.WriteAllLines(Path.Combine(one, TrainingRunner.MetricsFile), File.ReadLines(Path.Combine(two, TrainingRunner.MetricsFile)).Take(6));

        TrainOptions resume = Load([.. flags, "--output-dir", one, "--resume", "latest"]);
        var refused = Assert.ThrowsExactly<CheckpointException>(() => new TrainingRunner(resume with { BatchSize = 4 }).Run(TestContext.CancellationToken));
        StringAssert.Contains(refused.Message, "fingerprint", "another global batch is refused");

        TrainingSummary resumed = new TrainingRunner(resume with { BatchSize = 8 }).Run(TestContext.CancellationToken);
        AssertMetricsClose(Path.Combine(two, TrainingRunner.MetricsFile), resumed.MetricsFile, expectedLines: Steps);
        AssertAdaptersClose(Path.Combine(two, TrainingRunner.AdapterFolder), resumed.AdapterDir!);
    }

    [TestMethod]
    public void Train_OneRankCannotReadItsData_EveryRankFailsWithTheSameMessage()
    {
        MpiJob.RequireMpirun();
        using var dir = new TempDir();
        string[] flags = [.. Flags(dir, steps: 4), "--batch-size", "4", "--output-dir", dir.File("run")];
        string missing = dir.File("missing.jsonl");
        string[] rank1 = [.. flags];
        rank1[Array.IndexOf(rank1, "--data") + 1] = missing;
        using Process job = MpiJob.StartMpmd([(1, ["train", .. flags]), (1, ["train", .. rank1])], dir.File("mpi.log"));
        (int code, string log) = MpiJob.Wait(job, dir.File("mpi.log"), s_timeout);

        Assert.AreEqual(2, code, log); // ExitCodes.InvalidInput (a missing input path), from rank 1, on every rank.
        string line = $"onnx-lora train: error: rank 1 of 2: Data file '{missing}' does not exist.";
        Assert.AreEqual(2, log.Split('\n').Count(l => l.Trim() == line), $"both ranks print the same line; log:\n{log}");
        Assert.IsFalse(Directory.Exists(Path.Combine(dir.File("run"), "checkpoints")), "nothing was trained or saved");
    }

    private static string[] Flags(TempDir dir, int steps)
    {
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 19).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds{new string('!', i % 7)} in the big tree. They sang all day." })));
        return ["--model", s_model, "--tokenizer", s_tokenizer, "--data", data, "--seq-length", "48", "--max-steps", $"{steps}", "--learning-rate", "2e-3",
            "--lora-targets", "all-linear", "--intra-op-threads", "1", "--seed", "3", "--memory-limit", "none"];
    }

    private static string EvalData(TempDir dir)
    {
        string eval = dir.File("eval.jsonl");
        File.WriteAllLines(eval, Enumerable.Range(0, 11).Select(i => JsonSerializer.Serialize(new { text = $"Sue had {i} blue cups. She gave one to Sam." })));
        return eval;
    }

    private static TrainOptions Load(string[] flags)
    {
        var pairs = new List<KeyValuePair<string, string>>();
        for (int i = 0; i < flags.Length; i += 2)
        {
            pairs.Add(KeyValuePair.Create(flags[i][2..], flags[i + 1]));
        }

        return TrainOptionsLoader.Load(null, pairs);
    }

    private static void AssertMetricsClose(string expectedFile, string actualFile, int expectedLines)
    {
        string[] expected = File.ReadAllLines(expectedFile);
        string[] actual = File.ReadAllLines(actualFile);
        Assert.HasCount(expectedLines, expected);
        Assert.HasCount(expected.Length, actual);
        for (int i = 0; i < expected.Length; i++)
        {
            using JsonDocument e = JsonDocument.Parse(expected[i]);
            using JsonDocument a = JsonDocument.Parse(actual[i]);
            foreach (JsonProperty p in e.RootElement.EnumerateObject())
            {
                if (p.Name is "tokens_per_second" or "elapsed_seconds")
                {
                    continue;
                }

                JsonElement other = a.RootElement.GetProperty(p.Name);
                if (p.Name is "loss" or "grad_norm" or "perplexity")
                {
                    double x = p.Value.GetDouble();
                    Assert.AreEqual(x, other.GetDouble(), Tolerance * Math.Abs(x), $"line {i + 1} {p.Name}");
                }
                else
                {
                    Assert.AreEqual(p.Value.GetRawText(), other.GetRawText(), $"line {i + 1} {p.Name}");
                }
            }
        }
    }

    private static void AssertAdaptersClose(string expectedDir, string actualDir)
    {
        using SafetensorsFile expected = SafetensorsFile.Open(Path.Combine(expectedDir, "adapter_model.safetensors"));
        using SafetensorsFile actual = SafetensorsFile.Open(Path.Combine(actualDir, "adapter_model.safetensors"));
        CollectionAssert.AreEquivalent(expected.Tensors.Select(t => t.Name).ToArray(), actual.Tensors.Select(t => t.Name).ToArray());
        double largestB = 0;
        foreach (SafetensorsEntry t in expected.Tensors)
        {
            float[] x = expected.ToFloat32(t.Name);
            float[] y = actual.ToFloat32(t.Name);
            for (int i = 0; i < x.Length; i++)
            {
                Assert.AreEqual(x[i], y[i], Tolerance, $"'{t.Name}'[{i}]");
            }

            if (t.Name.Contains("lora_B", StringComparison.Ordinal))
            {
                largestB = Math.Max(largestB, x.Max(Math.Abs));
            }
        }

        Assert.IsGreaterThan(1e-3, largestB, "B starts at zero: training must have moved it, or the comparison proves nothing");
    }

    private static string AdapterFile(string run) => Path.Combine(run, TrainingRunner.AdapterFolder, "adapter_model.safetensors");

    private static string StripTimings(string line)
    {
        using JsonDocument d = JsonDocument.Parse(line);
        return string.Join(",", d.RootElement.EnumerateObject().Where(p => p.Name is not ("tokens_per_second" or "elapsed_seconds")).Select(p => $"{p.Name}={p.Value.GetRawText()}"));
    }

    private static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.EnumerateFiles(from))
        {
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        }
    }
}
