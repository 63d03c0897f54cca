using System.Text.Json;
using Onnx.Lora;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Runner;

/// <summary>
/// Every verb parses its .onnx once (issue 19): counted by <see cref="OnnxReadCounter"/>, which sees every
/// <see cref="OnnxReader"/> parse on the test's own flow.
/// </summary>
[TestClass]
public sealed class ReadOnceTests
{
    private static readonly string s_inline = Fixtures.Path("stories260K", "reference-onnx", "model.onnx");
    private static readonly string s_external = Fixtures.Path("stories260K", "reference-onnx", "external", "model.onnx");
    private static readonly string s_checkpoint = Fixtures.Path("stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Fixtures.Path("stories260K", "tok512.model");

    public TestContext TestContext { get; set; } = null!;

    private static TrainOptions Options(TempDir dir, string model)
    {
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, new[] { "The cat sat on the red mat.", "Lily saw a blue bird in the sky.", "Tom had a ball. He liked to play." }
            .Select(l => JsonSerializer.Serialize(new { text = l })));
        return new TrainOptions
        {
            Model = model,
            Tokenizer = s_tokenizer,
            Data = data,
            OutputDir = dir.File("run"),
            SeqLength = 16,
            BatchSize = 2,
            MaxSteps = 2,
            Lora = new LoraConfig { Rank = 4, Alpha = 8, Targets = ["all-linear"] },
            SaveSteps = 0,
            IntraOpThreads = 1,
            Seed = 20261203,
        };
    }

    [TestMethod]
    public void Train_OnStories260KOnnx_ReadsTheModelFileOnce()
    {
        using var dir = new TempDir();
        TrainingSummary summary;
        IReadOnlyList<string> reads;
        using (OnnxReadCounter counter = OnnxReadCounter.Start())
        {
            summary = new TrainingRunner(Options(dir, s_inline)).Run(TestContext.CancellationToken);
            reads = counter.Paths;
        }

        Assert.AreEqual(2, summary.Steps);
        CollectionAssert.AreEqual(new[] { Path.GetFullPath(s_inline) }, reads.ToArray(), string.Join(", ", reads));
        Assert.IsTrue(File.Exists(dir.File("run/" + TrainingRunner.TrainedModelFile)));
        Assert.IsFalse(File.Exists(dir.File("run/" + TrainingRunner.TrainedModelFile + ".data")), "an inline source gives an inline trained model");
    }

    [TestMethod]
    public void Train_OnExternalDataModel_ReadsOnceAndWritesTheFrozenWeightsUnchanged()
    {
        using var dir = new TempDir();
        IReadOnlyList<string> reads;
        using (OnnxReadCounter counter = OnnxReadCounter.Start())
        {
            Assert.AreEqual(2, new TrainingRunner(Options(dir, s_external)).Run(TestContext.CancellationToken).Steps);
            reads = counter.Paths;
        }

        CollectionAssert.AreEqual(new[] { Path.GetFullPath(s_external) }, reads.ToArray(), string.Join(", ", reads));
        string trained = dir.File("run/" + TrainingRunner.TrainedModelFile);
        Assert.IsTrue(File.Exists(trained + ".data"), "an external-data source gives an external-data trained model");

        // The trained model's frozen weights were written from the artifacts' data file the run mapped: byte for byte
        // the source's.
        using Model source = OnnxReader.Load(s_external);
        using Model written = OnnxReader.Load(trained);
        int compared = 0;
        foreach (Value init in source.Graph.Initializers.Values)
        {
            Tensor expected = init.Initializer!;
            Tensor actual = written.Graph.Initializers[init.Name].Initializer!;
            Assert.IsTrue(expected.GetBytes().Span.SequenceEqual(actual.GetBytes().Span), init.Name);
            compared++;
        }

        Assert.IsGreaterThan(20, compared);
        Assert.IsTrue(written.Graph.Initializers.Values.Any(v => v.Name.Contains("lora_B", StringComparison.Ordinal)
            && v.Initializer!.ToArray<float>().Any(x => x != 0)), "trained LoRA B tensors are written");
    }

    [TestMethod]
    public void Train_OnLlama2cCheckpoint_ParsesOnlyTheConvertedModelOnce()
    {
        using var dir = new TempDir();
        IReadOnlyList<string> reads;
        using (OnnxReadCounter counter = OnnxReadCounter.Start())
        {
            Assert.AreEqual(2, new TrainingRunner(Options(dir, s_checkpoint)).Run(TestContext.CancellationToken).Steps);
            reads = counter.Paths;
        }

        Assert.HasCount(1, reads, string.Join(", ", reads));
        Assert.AreEqual("stories260K.onnx", Path.GetFileName(reads[0]));
    }

    [TestMethod]
    public void Inject_Merge_ExportAdapter_EachReadTheirModelOnce()
    {
        using var dir = new TempDir();
        string lora = dir.File("lora.onnx");
        int Reads(params string[] args)
        {
            using OnnxReadCounter counter = OnnxReadCounter.Start();
            (int code, string output, string error) = CliRunner.Run(args);
            Assert.AreEqual(0, code, output + error);
            return counter.Count;
        }

        Assert.AreEqual(1, Reads("inject", s_external, "-o", lora, "-r", "4", "--alpha", "8"));
        Assert.AreEqual(1, Reads("merge", lora, "-o", dir.File("merged.onnx")));
        Assert.AreEqual(1, Reads("export-adapter", lora, "--output", dir.File("a.onnx_adapter"), "--serving", dir.File("serving")));
        Assert.AreEqual(1, Reads("merge", s_external, "--adapter", dir.File("a.onnx_adapter"), "-o", dir.File("merged-base.onnx")));
        Assert.AreEqual(1, Reads("inspect", lora));
    }
}
