using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Api;

/// <summary>
/// The public facade (<see cref="LoraModel"/>, <see cref="LoraAdapter"/>, <see cref="LoraTrainer"/>) against the CLI:
/// the same inputs through the facade and through <c>onnx-lora</c> verbs give byte-identical files, which holds only if
/// both run the same code. Cancellation is checked against the run folder the CLI's Ctrl-C path leaves.
/// </summary>
[TestClass]
public sealed class LoraApiTests
{
    private static readonly string s_stories = Path.Combine(Fixtures.RepoRoot, "models", "default");
    private static string s_work = null!;
    private static string s_base = null!;

    [ClassInitialize]
    public static void ConvertOnce(TestContext _)
    {
        s_work = Directory.CreateTempSubdirectory("onnx-lora-api-").FullName;
        s_base = Path.Combine(s_work, "stories260K.onnx");
        Assert.AreEqual(0, CliRunner.Run("convert-llama2c", Path.Combine(s_stories, "stories260K", "stories260K.bin"), "-o", s_base).ExitCode);
    }

    [ClassCleanup]
    public static void DeleteWork() => Directory.Delete(s_work, recursive: true);

    [TestMethod]
    public void Inject_SameOptionsAsCliInject_WritesTheSameFileAndCount()
    {
        string cliOut = Path.Combine(s_work, "cli.lora.onnx");
        (int code, string output, string error) = CliRunner.Run("inject", s_base, "-o", cliOut, "--targets", "q_proj,v_proj", "-r", "4", "--alpha", "8", "--seed", "3", "--layers", "0-2");
        Assert.AreEqual(0, code, error);

        string apiOut = Path.Combine(s_work, "api.lora.onnx");
        InjectionResult result;
        using (LoraModel model = LoraModel.Load(s_base))
        {
            Assert.IsFalse(model.HasAdapters);
            IReadOnlyList<LinearLayer> targets = model.FindTargets();
            Assert.AreEqual(35, targets.Count(t => !t.IsOutputHead), "inspect's count");
            Assert.AreEqual("lm_head", targets.Single(t => t.IsOutputHead).Module);
            result = model.Inject(new LoraOptions { Targets = ["q_proj", "v_proj"], Rank = 4, Alpha = 8, Seed = 3, Layers = LoraOptions.ParseLayers("0-2") });
            model.Save(apiOut);
            Assert.IsTrue(model.HasAdapters);
        }

        CollectionAssert.AreEqual(File.ReadAllBytes(cliOut), File.ReadAllBytes(apiOut));
        Assert.HasCount(6, result.Modules);
        // q_proj is 64→64, v_proj 64→32 (4 of 8 heads for keys and values): r·(in + out) each.
        Assert.AreEqual((3 * 4 * (64 + 64)) + (3 * 4 * (64 + 32)), result.TrainableParameters);
        Assert.StartsWith($"trainable params: {result.TrainableParameters:N0} || all params: {result.AllParameters:N0}", output);
        using LoraModel reloaded = LoraModel.Load(apiOut);
        CollectionAssert.AreEqual(result.Modules.ToList(), reloaded.AdaptedModules.ToList());
    }

    [TestMethod]
    public void TrainMergeExport_ThroughTheFacade_MatchTheCliVerbsByteForByte()
    {
        var steps = new List<StepReport>();
        TrainingSummary run = LoraTrainer.TrainAsync(Options("trained", maxSteps: 3), new ImmediateProgress(steps.Add)).GetAwaiter().GetResult();
        Assert.AreEqual(RunOutcome.Completed, run.Outcome);
        CollectionAssert.AreEqual(new[] { 1, 2, 3 }, steps.Select(s => s.Step).ToArray());
        Assert.IsTrue(steps.All(s => double.IsFinite(s.Loss) && s.LearningRate > 0 && s.TokensPerSecond > 0));

        string cliMerged = Path.Combine(s_work, "cli.merged.onnx"), apiMerged = Path.Combine(s_work, "api.merged.onnx");
        string cliAdapter = Path.Combine(s_work, "cli.onnx_adapter"), apiAdapter = Path.Combine(s_work, "api.onnx_adapter");
        string cliPeft = Path.Combine(s_work, "cli-peft"), apiPeft = Path.Combine(s_work, "api-peft");
        Assert.AreEqual(0, CliRunner.Run("merge", run.LoraModel, "-o", cliMerged).ExitCode);
        Assert.AreEqual(0, CliRunner.Run("export-adapter", run.LoraModel, "-o", cliAdapter, "--peft", cliPeft).ExitCode);
        using (LoraModel trained = LoraModel.Load(run.LoraModel))
        {
            LoraAdapter adapter = trained.GetAdapter();
            adapter.SaveOnnxAdapter(apiAdapter);
            adapter.SavePeft(apiPeft);
            Assert.AreEqual(trained.AdaptedModules.Count, trained.Merge().MergedModules);
            trained.Save(apiMerged);
        }

        CollectionAssert.AreEqual(File.ReadAllBytes(cliMerged), File.ReadAllBytes(apiMerged));
        CollectionAssert.AreEqual(File.ReadAllBytes(cliAdapter), File.ReadAllBytes(apiAdapter));
        foreach (string file in Directory.GetFiles(cliPeft).Select(f => Path.GetFileName(f)))
        {
            CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(cliPeft, file)), File.ReadAllBytes(Path.Combine(apiPeft, file)), file);
        }

        // Loading the PEFT adapter back and merging it into the base is `merge BASE --adapter DIR`.
        string cliFromBase = Path.Combine(s_work, "cli.base-merged.onnx"), apiFromBase = Path.Combine(s_work, "api.base-merged.onnx");
        Assert.AreEqual(0, CliRunner.Run("merge", s_base, "--adapter", apiPeft, "-o", cliFromBase).ExitCode);
        using (LoraModel baseModel = LoraModel.Load(s_base))
        {
            baseModel.Merge(LoraAdapter.Load(apiPeft));
            baseModel.Save(apiFromBase);
        }

        CollectionAssert.AreEqual(File.ReadAllBytes(cliFromBase), File.ReadAllBytes(apiFromBase));
    }

    [TestMethod]
    public void TrainAsync_CancelledDuringStepTwo_ReturnsCancelledWithACheckpointOfTheLastStep()
    {
        using var cancel = new CancellationTokenSource();
        var progress = new ImmediateProgress(s =>
        {
            if (s.Step == 2)
            {
                cancel.Cancel();
            }
        });
        TrainingSummary run = LoraTrainer.TrainAsync(Options("cancelled", maxSteps: 50), progress, cancel.Token).GetAwaiter().GetResult();

        Assert.AreEqual(RunOutcome.Cancelled, run.Outcome);
        Assert.AreEqual(2, run.Steps);
        Assert.AreEqual(Path.Combine(s_work, "cancelled", TrainingRunner.CheckpointsFolder, "checkpoint-2"), run.LastCheckpoint);
        Assert.IsTrue(Directory.Exists(run.LastCheckpoint), "no checkpoint written on cancel");
        Assert.IsNull(run.AdapterDir, "a cancelled run writes no final adapter, as the CLI's");
    }

    [TestMethod]
    public void Inject_IntoALoraModel_ThrowsAndMergeOfABaseWithoutAdapterThrows()
    {
        using LoraModel model = LoraModel.Load(s_base);
        Assert.ThrowsExactly<InvalidOperationException>(() => model.Merge());
        model.Inject(new LoraOptions());
        Assert.ThrowsExactly<InvalidOperationException>(() => model.Inject(new LoraOptions()));
        Assert.ThrowsExactly<global::Onnx.Lora.Ir.OutputConflictException>(() => model.Save(s_base));
    }

    private static TrainOptions Options(string folder, int maxSteps) => LoraTrainer.LoadOptions(null, new Dictionary<string, string>
    {
        ["model"] = s_base,
        ["tokenizer"] = Path.Combine(s_stories, "stories260K", "tok512.model"),
        ["data"] = Path.Combine(s_stories, "data", "tiny-stories.jsonl"),
        ["output_dir"] = Path.Combine(s_work, folder),
        ["max_steps"] = maxSteps.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["batch_size"] = "4",
        ["seq_length"] = "64",
        ["learning_rate"] = "2e-3",
        ["seed"] = "1",
    });

    /// <summary>Reports on the training thread (<see cref="Progress{T}"/> would post to the thread pool, after the fact).</summary>
    private sealed class ImmediateProgress(Action<StepReport> report) : IProgress<StepReport>
    {
        public void Report(StepReport value) => report(value);
    }
}
