using System.Diagnostics;
using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Runner;

[TestClass]
public sealed class ResourceLimitTests
{
    private static readonly string s_model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Run_WhenTheEstimateExceedsTheMemoryLimit_ThrowsBeforeAnyWorkWithTheEstimate()
    {
        using var dir = new TempDir();
        TrainOptions options = Options(dir) with { SeqLength = 512, BatchSize = 64, MemoryLimit = "1GiB" };
        var clock = Stopwatch.StartNew();

        var e = Assert.ThrowsExactly<ResourceLimitException>(() => new TrainingRunner(options).Run(TestContext.CancellationToken));

        TestContext.WriteLine(e.Message);
        Assert.IsLessThan(2.0, clock.Elapsed.TotalSeconds, "the check runs before conversion, data and graph building");
        Assert.IsFalse(Directory.Exists(dir.File("run")), "nothing was written");
        // Independent arithmetic for stories260K (dim 64, hidden 172, 5 layers, 8 heads, vocab 512) at b=64, s=512:
        // the attention term alone is 1.1 · 4 B · 64·512 · 5·8·512 floats = 2.75 GiB, the whole activation term
        // 1.1 · 4 B · 64·512 · (5·(13·64 + 6·172 + 1.1·8·512) + 3·512 / 8) = 4.30 GiB.
        StringAssert.StartsWith(e.Message, "Training needs ~");
        StringAssert.Contains(e.Message, "but 1.0 GiB is available (--memory-limit)");
        StringAssert.Contains(e.Message, "lower --batch-size or --seq-length");
        double needed = double.Parse(e.Message["Training needs ~".Length..e.Message.IndexOf(" GiB", StringComparison.Ordinal)], System.Globalization.CultureInfo.InvariantCulture);
        Assert.IsGreaterThan(4.30, needed);
        Assert.IsLessThan(5.0, needed);
    }

    [TestMethod]
    public void Run_WithGradientCheckpointing_ChecksTheRecomputationEstimate()
    {
        using var dir = new TempDir();
        TrainOptions options = Options(dir) with { SeqLength = 512, BatchSize = 64, MemoryLimit = "1GiB", GradientCheckpointing = true };

        var e = Assert.ThrowsExactly<ResourceLimitException>(() => new TrainingRunner(options).Run(TestContext.CancellationToken));

        TestContext.WriteLine(e.Message);
        Assert.IsFalse(Directory.Exists(dir.File("run")), "nothing was written");
        // Same shape as above with recomputation: 1.1 · 4 B · 64·512 · (5·64 layer inputs + 3·512 / 8 loss + 13·64 +
        // 6·172 + 1.1·8·512 one layer + 2·8·512 its attention backward) = 2.02 GiB of activations, + 0.2 GiB runtime;
        // not the 4.30 GiB that keeps every layer.
        double needed = double.Parse(e.Message["Training needs ~".Length..e.Message.IndexOf(" GiB", StringComparison.Ordinal)], System.Globalization.CultureInfo.InvariantCulture);
        Assert.IsGreaterThan(2.02, needed);
        Assert.IsLessThan(2.7, needed);
    }

    [TestMethod]
    public void TrainVerb_WhenTheEstimateExceedsTheMemoryLimit_ExitsWithResourceLimitAndWritesNothing()
    {
        using var dir = new TempDir();
        TrainOptions o = Options(dir);

        (int exit, _, string stderr) = Onnx.Lora.Tests.Cli.CliRunner.Run("train", "--model", o.Model, "--tokenizer", o.Tokenizer, "--data", o.Data,
            "--output-dir", o.OutputDir, "--seq-length", "512", "--batch-size", "64", "--max-steps", "3", "--memory-limit", "1GiB");

        TestContext.WriteLine(stderr);
        Assert.AreEqual(7, exit, "ResourceLimit exit code");
        Assert.AreEqual(1, stderr.Trim().Split('\n').Length, "one error line, no stack trace");
        StringAssert.Contains(stderr, "Training needs ~");
        Assert.IsFalse(Directory.Exists(o.OutputDir), "nothing was written");
    }

    [TestMethod]
    public void Run_WhenTheEstimateFits_Trains()
    {
        using var dir = new TempDir();
        TrainingSummary summary = new TrainingRunner(Options(dir) with { MemoryLimit = "2GiB" }).Run(TestContext.CancellationToken);
        Assert.AreEqual(3, summary.Steps);
    }

    [TestMethod]
    public void Validate_WithAMemoryLimitThatIsNotASize_NamesTheKey()
    {
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(null, [KeyValuePair.Create("model", "m"), KeyValuePair.Create("data", "d"), KeyValuePair.Create("tokenizer", "t"), KeyValuePair.Create("memory_limit", "lots")]));
        StringAssert.Contains(e.Message, "memory_limit");
    }

    [TestMethod]
    public void ParseSize_WithUnits_GivesPowersOf1024()
    {
        Assert.AreEqual(1536L << 20, SystemResources.ParseSize("1.5GiB", "x"));
        Assert.AreEqual(512L << 20, SystemResources.ParseSize("512M", "x"));
        Assert.AreEqual(4096L, SystemResources.ParseSize("4096", "x"));
        Assert.IsFalse(SystemResources.TryParseSize("-1G", out _));
    }

    [TestMethod]
    public void Merge_WhenTheDiskHasNoRoom_FailsBeforeWritingAndSaysHowMuchIsNeeded()
    {
        using var dir = new TempDir();
        string lora = dir.File("lora.onnx");
        using (Model model = TorchLlamaBuilder.Build(new LlamaConfig { Hidden = 128, Intermediate = 256, Vocab = 1000, Naming = InitializerNaming.Named }))
        {
            Onnx.Lora.Injection.LoraInjector.Inject(model, new Onnx.Lora.LoraOptions { Rank = 4, Alpha = 8 });
            OnnxWriter.Save(model, lora, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        }

        long weights = new FileInfo(lora + ".data").Length;
        (int exit, string error) = CliProcess.RunCapturingErrors(["merge", lora, "-o", dir.File("out/merged.onnx")],
            new Dictionary<string, string> { [SystemResources.DiskLimitVariable] = "100KiB" });

        TestContext.WriteLine(error);
        Assert.AreEqual(7, exit, "ResourceLimit exit code");
        StringAssert.Contains(error, "needs ~");
        StringAssert.Contains(error, "has 0 MiB free");
        Assert.IsFalse(Directory.Exists(dir.File("out")) && Directory.EnumerateFiles(dir.File("out")).Any(), "nothing is written");
        Assert.IsGreaterThan(100 << 10, weights, "the model must need more than the limit");
    }

    private static TrainOptions Options(TempDir dir)
    {
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds." })));
        return new TrainOptions
        {
            Model = s_model, Tokenizer = s_tokenizer, Data = data, OutputDir = dir.File("run"), SeqLength = 32, BatchSize = 2, MaxSteps = 3, IntraOpThreads = 1,
        };
    }
}
