using System.Diagnostics;
using System.Text.Json;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Trainer.Schedules;

namespace Onnx.Lora.Tests.Runner;

/// <summary>End-to-end runs of <see cref="TrainingRunner"/> / <c>onnx-lora train</c> on the real stories260K checkpoint.</summary>
[TestClass]
public sealed class TrainingRunnerTests
{
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    // Short lines with a strong repeated pattern: a few dozen steps must lower the loss clearly.
    private static readonly string[] s_lines =
    [
        "The cat sat on the red mat.", "The dog ran to the big tree.", "Lily saw a blue bird in the sky.",
        "Tom had a ball. He liked to play.", "The sun was hot. They went to the sea.", "Sam gave Mia a red flower.",
        "The frog sat on the green log.", "Ben and Sue ate cake at the park.", "The cat ran to the red mat.",
        "Lily saw a red bird in the tree.", "Tom had a kite. He liked to fly it.", "The dog sat on the big mat.",
    ];

    public TestContext TestContext { get; set; } = null!;

    private static TrainOptions Options(TempDir dir, int maxSteps, string? output = null) => new()
    {
        Model = s_checkpoint,
        Tokenizer = s_tokenizer,
        Data = WriteJsonl(dir, "train.jsonl", s_lines),
        EvalData = WriteJsonl(dir, "eval.jsonl", s_lines.Take(4).Select(l => l.Replace("The", "A", StringComparison.Ordinal))),
        OutputDir = output ?? dir.File("run"),
        SeqLength = 32,
        BatchSize = 4,
        MaxSteps = maxSteps,
        LearningRate = 5e-3,
        Schedule = ScheduleKind.Cosine,
        WarmupSteps = 2,
        Lora = new LoraConfig { Rank = 4, Alpha = 8, Targets = ["all-linear"] },
        EvalSteps = 6,
        SaveSteps = 4,
        SaveTotalLimit = 2,
        IntraOpThreads = 1,
        Seed = 20261125,
    };

    private static string WriteJsonl(TempDir dir, string name, IEnumerable<string> lines)
    {
        string path = dir.File(name);
        File.WriteAllLines(path, lines.Select(l => JsonSerializer.Serialize(new { text = l })));
        return path;
    }

    private static List<(string Kind, int Step, double Loss)> ReadMetrics(string path) =>
        File.ReadLines(path).Select(l =>
        {
            using JsonDocument d = JsonDocument.Parse(l);
            return (d.RootElement.GetProperty("kind").GetString()!, d.RootElement.GetProperty("step").GetInt32(), d.RootElement.GetProperty("loss").GetDouble());
        }).ToList();

    [TestMethod]
    public void Run_OnStories260K_LowersTrainAndEvalLossAndWritesRunLayout()
    {
        using var dir = new TempDir();
        var clock = Stopwatch.StartNew();
        TrainingSummary s = new TrainingRunner(Options(dir, 24)).Run(TestContext.CancellationToken);
        TestContext.WriteLine($"24 steps in {clock.Elapsed.TotalSeconds:F2} s; train {s.FirstTrainLoss:F4} → {s.LastTrainLoss:F4}, eval {s.FirstEvalLoss:F4} → {s.LastEvalLoss:F4}");

        Assert.AreEqual(RunOutcome.Completed, s.Outcome);
        Assert.AreEqual(24, s.Steps);
        var metrics = ReadMetrics(s.MetricsFile);
        double[] train = metrics.Where(m => m.Kind == "train").Select(m => m.Loss).ToArray();
        Assert.HasCount(24, train);
        // Mean of the last 4 steps vs the first 4: this data is learnable, so the loss must drop by a wide margin.
        Assert.IsLessThan(0.7 * train.Take(4).Average(), train.TakeLast(4).Average(), $"train losses: {string.Join(", ", train)}");
        Assert.IsLessThan(s.FirstEvalLoss!.Value - 0.2, s.LastEvalLoss!.Value);
        Assert.AreEqual(0, metrics.First(m => m.Kind == "eval").Step, "the first evaluation is the untrained baseline");

        string run = dir.File("run");
        foreach (string f in new[] { "metrics.jsonl", "loss.png", "summary.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "artifacts/training.onnx" })
        {
            Assert.IsTrue(File.Exists(Path.Combine(run, f)), f);
        }

        // keep-last-2: steps 20 and 24 (24 is the final save).
        CollectionAssert.AreEqual(new[] { "checkpoint-20", "checkpoint-24" }, CheckpointStore.List(Path.Combine(run, "checkpoints")).Select(Path.GetFileName).ToArray());
        // HF's trainer_state.json: one log_history entry per step (and per evaluation) up to the checkpoint's step.
        using (var hf = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(run, "checkpoints", "checkpoint-20", CheckpointStore.StateFile))))
        {
            Assert.AreEqual(20, hf.RootElement.GetProperty("global_step").GetInt32());
            Assert.AreEqual(24, hf.RootElement.GetProperty("max_steps").GetInt32());
            var logged = hf.RootElement.GetProperty("log_history").EnumerateArray().Where(e => e.TryGetProperty("loss", out _)).ToArray();
            CollectionAssert.AreEqual(Enumerable.Range(1, 20).ToArray(), logged.Select(e => e.GetProperty("step").GetInt32()).ToArray());
            Assert.AreEqual(train[19], logged[19].GetProperty("loss").GetDouble(), 0, "the logged loss of step 20");
        }

        byte[] png = File.ReadAllBytes(Path.Combine(run, "loss.png"));
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png.Take(4).ToArray());
    }

    [TestMethod]
    public void Resume_AfterCrashPastCheckpoint_ReproducesUninterruptedLossesBitIdentically()
    {
        using var dir = new TempDir();
        TrainingSummary full = new TrainingRunner(Options(dir, 8, dir.File("full"))).Run(TestContext.CancellationToken);
        var expected = ReadMetrics(full.MetricsFile);

        // The interrupted run dies (as if by SIGKILL) after step 6, two steps past checkpoint-4 and after the eval at
        // step 6: no final save, and metrics lines past the checkpoint that the resume must drop and redo.
        TrainOptions o = Options(dir, 8, dir.File("crashed"));
        var crash = new CrashAfterStep(6);
        Assert.ThrowsExactly<InvalidOperationException>(() => new TrainingRunner(o, crash).Run(TestContext.CancellationToken));
        Assert.AreEqual("checkpoint-4", Path.GetFileName(CheckpointStore.FindLatest(Path.Combine(o.OutputDir, "checkpoints"))));

        TrainingSummary resumed = new TrainingRunner(o with { Resume = "latest" }).Run(TestContext.CancellationToken);
        var actual = ReadMetrics(resumed.MetricsFile);

        Assert.AreEqual(8, resumed.Steps);
        Assert.HasCount(expected.Count, actual);
        for (int i = 0; i < expected.Count; i++)
        {
            // Exact equality: same parameters, moments, data order and learning rates give the same float losses.
            Assert.AreEqual(expected[i], actual[i], $"metrics line {i + 1}");
        }

        CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(full.AdapterDir!, "adapter_model.safetensors")),
            File.ReadAllBytes(Path.Combine(resumed.AdapterDir!, "adapter_model.safetensors")), "final adapters differ");
    }

    [TestMethod]
    public void Run_KilledMidSave_LeavesPreviousCheckpointLoadableAndResumable()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 12) with { EvalData = null, EvalSteps = 0, SaveTotalLimit = 0 };
        int saves = 0;
        var runner = new TrainingRunner(o)
        {
            AfterCheckpointFileWritten = file =>
            {
                // The second save (step 8) dies after its first file.
                if (file == CheckpointStore.AdapterFile && ++saves == 2)
                {
                    throw new IOException("simulated kill during save");
                }
            },
        };
        Assert.ThrowsExactly<CheckpointException>(() => runner.Run(TestContext.CancellationToken));

        string checkpoints = Path.Combine(o.OutputDir, "checkpoints");
        CollectionAssert.AreEqual(new[] { "checkpoint-4" }, CheckpointStore.List(checkpoints).Select(Path.GetFileName).ToArray());
        Assert.IsFalse(Directory.EnumerateDirectories(checkpoints, "checkpoint-8*").Any(), "no partial checkpoint-8 is visible");
        TrainingCheckpoint loaded = CheckpointStore.Load(Path.Combine(checkpoints, "checkpoint-4"));
        Assert.AreEqual(4, loaded.State.GlobalStep);

        TrainingSummary resumed = new TrainingRunner(o with { Resume = "latest" }).Run(TestContext.CancellationToken);
        Assert.AreEqual(12, resumed.Steps);
    }

    [TestMethod]
    public void Train_AbsurdLearningRate_StopsWithStepNamedAndGuardExitCode()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 6);
        (int code, string output, string error) = CliRunner.Run("train", "--model", o.Model, "--tokenizer", o.Tokenizer, "--data", o.Data,
            "--output-dir", dir.File("run"), "--seq-length", "32", "--batch-size", "4", "--max-steps", "6", "--learning-rate", "1e30",
            "--lr-scheduler", "constant", "--lora-targets", "all-linear", "--save-steps", "0", "--max-grad-norm", "0");
        TestContext.WriteLine(output + error);

        Assert.AreEqual(3, code, error);
        StringAssert.Matches(error, new System.Text.RegularExpressions.Regex(@"Step \d+: the (loss|gradient norm) \S+ is not finite"));
    }

    [TestMethod]
    public void Train_GradientCheckpointingFromCli_SaysEveryLayerRecomputesAndLossesMatch()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 3);
        var losses = new List<double[]>();
        foreach (bool checkpointing in new[] { false, true })
        {
            string run = dir.File(checkpointing ? "on" : "off");
            // The torch export of stories260K (the llama2.c conversion has no shape facts: see README, gradient checkpointing).
            string[] args = ["train", "--model", Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"), "--tokenizer", o.Tokenizer, "--data", o.Data, "--output-dir", run, "--seq-length", "32", "--batch-size", "4",
                "--max-steps", "3", "--lora-targets", "all-linear", "--lora-dropout", "0", "--save-steps", "0", .. (checkpointing ? new[] { "--gradient-checkpointing" } : [])];
            (int code, string output, string error) = CliRunner.Run(args);
            Assert.AreEqual(0, code, error);
            // stories260K has 5 layers: each recomputes.
            Assert.AreEqual(checkpointing, output.Contains("gradient checkpointing: 5 layers recompute their activations", StringComparison.Ordinal), output);
            losses.Add([.. File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement)
                .Where(e => e.GetProperty("kind").GetString() == "train").Select(e => e.GetProperty("loss").GetDouble())]);
        }

        Assert.HasCount(3, losses[1]);
        for (int i = 0; i < 3; i++)
        {
            // float32: a recomputed copy may round differently in the last bits (ActivationRecomputationTests bound).
            Assert.AreEqual(losses[0][i], losses[1][i], 1e-5 * losses[0][i], $"step {i + 1}");
        }
    }

    [TestMethod]
    public void Train_NanPolicySkip_SkipsNonFiniteStepsAndFinishes()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 4) with { LearningRate = 1e30, Schedule = ScheduleKind.Constant, WarmupSteps = 0, MaxGradNorm = 0, NanPolicy = NonFinitePolicy.Skip, EvalData = null, EvalSteps = 0 };
        TrainingSummary s = new TrainingRunner(o).Run(TestContext.CancellationToken);
        Assert.AreEqual(4, s.Steps);
        Assert.IsGreaterThan(0, s.SkippedSteps);
    }

    [TestMethod]
    public void Train_BadDataRow_ExitsBadDataNamingFileAndLineBeforeTraining()
    {
        using var dir = new TempDir();
        string data = dir.File("bad.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"Once upon a time.\"}", "{\"text\": \"The end.\"}", "{\"text\": \"oops\""]);
        (int code, _, string error) = CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", data, "--output-dir", dir.File("run"), "--max-steps", "2");

        Assert.AreEqual(6, code, error); // ExitCodes.BadData
        StringAssert.Contains(error, "bad.jsonl:3");
        Assert.IsFalse(Directory.Exists(dir.File("run/artifacts")), "the data is checked before any model work");
    }

    [TestMethod]
    public void Train_CudaOnCpuBuild_ExitsInvalidInputNamingGpuPackage()
    {
        using var dir = new TempDir();
        (int code, _, string error) = CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", WriteJsonl(dir, "d.jsonl", s_lines),
            "--output-dir", dir.File("run"), "--execution-provider", "cuda");

        Assert.AreEqual(8, code, error);
        StringAssert.Contains(error, "Microsoft.ML.OnnxRuntime.Gpu");
        Assert.IsFalse(Directory.Exists(dir.File("run/artifacts")), "the provider is checked before any model work");
    }

    [TestMethod]
    public void FinalAdapter_ImportedAndMerged_GivesTheTrainedLoraModelsLogits()
    {
        using var dir = new TempDir();
        TrainingSummary s = new TrainingRunner(Options(dir, 6) with { EvalData = null, EvalSteps = 0 }).Run(TestContext.CancellationToken);

        // Reference: the LoRA graph itself, run by ORT with the trained A/B (from the last checkpoint's raw tensors).
        TrainingCheckpoint last = CheckpointStore.Load(s.LastCheckpoint!);
        string loraModel = Path.Combine(Path.GetDirectoryName(s.LoraModel)!, TrainingRunner.ArtifactsFolder, TrainingRunner.LoraModelFile);
        string trainedLora = dir.File("trained.lora.onnx");
        using (Model model = OnnxReader.Load(loraModel))
        {
            foreach (NamedTensor t in last.Parameters)
            {
                model.Graph.Initializers.SetData(t.Name, InMemoryTensor.FromFloats(t.Name, t.Shape, t.Data));
            }

            OnnxWriter.Save(model, trainedLora);
        }

        // Merged: the exporter reads the PEFT folder independently of the trainer and folds it into the base weights.
        string merged = dir.File("merged.onnx");
        using (Model model = OnnxReader.Load(loraModel))
        {
            LoraManifest manifest = LoraManifest.Read(model)!;
            LoraWeights weights = PeftAdapter.Import(s.AdapterDir!, manifest.Modules);
            Assert.IsTrue(weights.Modules.Any(m => m.B.Any(v => v != 0)), "training changed B, so the merge is not vacuous");
            LoraMerger.MergeInto(model, manifest, weights, loraModel);
            OnnxWriter.Save(model, merged);
        }

        float[] expected = OrtRunner.Run(trainedLora, seed: 5)["logits"];
        float[] actual = OrtRunner.Run(merged, seed: 5)["logits"];
        float[] untrained = OrtRunner.Run(loraModel, seed: 5)["logits"];
        float[] runnerModel = OrtRunner.Run(s.LoraModel, seed: 5)["logits"];
        CollectionAssert.AreEqual(expected, runnerModel, "the runner's trained LoRA model holds the checkpoint's tensors");
        float scale = expected.Max(MathF.Abs);
        TestContext.WriteLine($"max |merged - lora| = {ErrorMetrics.MaxAbsDiff(expected, actual):G3}, max |logit| = {scale:G3}, max |trained - untrained| = {ErrorMetrics.MaxAbsDiff(expected, untrained):G3}");
        Assert.IsLessThanOrEqualTo(1e-5f * scale, ErrorMetrics.MaxAbsDiff(expected, actual));
        Assert.IsGreaterThan(1e-3f * scale, ErrorMetrics.MaxAbsDiff(expected, untrained), "the trained adapter must change the logits");
    }

    [TestMethod]
    public void Step_GradientAccumulationTwoOfBatchTwo_MatchesBatchFour()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 6) with { EvalData = null, EvalSteps = 0, SaveSteps = 0 };
        TrainingSummary big = new TrainingRunner(o with { OutputDir = dir.File("b4") }).Run(TestContext.CancellationToken);
        TrainingSummary accumulated = new TrainingRunner(o with { OutputDir = dir.File("b2x2"), BatchSize = 2, GradientAccumulationSteps = 2 }).Run(TestContext.CancellationToken);

        double[] expected = ReadMetrics(big.MetricsFile).Select(m => m.Loss).ToArray();
        double[] actual = ReadMetrics(accumulated.MetricsFile).Select(m => m.Loss).ToArray();
        Assert.HasCount(6, actual);
        for (int i = 0; i < expected.Length; i++)
        {
            // Same rows, same token-weighted mean gradient; only float summation order (and padding width) differ.
            Assert.AreEqual(expected[i], actual[i], 1e-5 * Math.Abs(expected[i]), $"step {i + 1}");
        }
    }

    [TestMethod]
    public void Run_CancelledMidRun_SavesCheckpointAndResumes()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir, 8) with { EvalData = null, EvalSteps = 0, SaveSteps = 0 };
        using var cts = new CancellationTokenSource();
        TrainingSummary cancelled = new TrainingRunner(o, new CancelAtStep(3, cts)).Run(cts.Token);

        Assert.AreEqual(RunOutcome.Cancelled, cancelled.Outcome);
        Assert.AreEqual(3, cancelled.Steps);
        Assert.IsNull(cancelled.AdapterDir, "a cancelled run writes no final adapter");
        Assert.AreEqual("checkpoint-3", Path.GetFileName(cancelled.LastCheckpoint));

        TrainingSummary resumed = new TrainingRunner(o with { Resume = cancelled.LastCheckpoint }).Run(TestContext.CancellationToken);
        Assert.AreEqual(RunOutcome.Completed, resumed.Outcome);
        Assert.AreEqual(8, ReadMetrics(resumed.MetricsFile).Count(m => m.Kind == "train"));
    }

    [TestMethod]
    public void Train_CancelledFromCommandLine_ExitsCancelled()
    {
        using var dir = new TempDir();
        using var output = new StringWriter();
        using var error = new StringWriter();
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        int code = Onnx.Lora.Cli.CliApp.RunAsync(["train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", WriteJsonl(dir, "d.jsonl", s_lines),
            "--output-dir", dir.File("run"), "--max-steps", "4", "--seq-length", "32"], output, error, cts.Token).GetAwaiter().GetResult();

        Assert.AreEqual(130, code, error.ToString());
    }

    /// <summary>Cancels the run's token after a step, as Ctrl-C does.</summary>
    private sealed class CancelAtStep(int step, CancellationTokenSource source) : ITrainingObserver
    {
        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnStep(StepReport report)
        {
            if (report.Step == step)
            {
                source.Cancel();
            }
        }

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }

    /// <summary>Throws out of the loop after a step, like a process killed between steps (no final save runs).</summary>
    private sealed class CrashAfterStep(int step) : ITrainingObserver
    {
        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnStep(StepReport report)
        {
            if (report.Step == step)
            {
                throw new InvalidOperationException("simulated kill");
            }
        }

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }
}
