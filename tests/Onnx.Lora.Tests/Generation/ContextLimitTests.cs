using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Generation;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Generation;

/// <summary>
/// The context a model holds (its <c>max_position_embeddings</c> metadata) is checked up front: generation stops
/// cleanly when it is full, training refuses a longer seq_length. The bound is proven against ONNX Runtime itself:
/// without the metadata, the run one position past it fails.
/// </summary>
[TestClass]
public sealed class ContextLimitTests
{
    private const int Context = 16;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Convert_Stories260K_RecordsTheCheckpointsSeqLenAsMaxPositions()
    {
        string bin = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        using Model model = Llama2cConverter.Convert(bin);

        Assert.AreEqual(Llama2cCheckpoint.Open(bin).Header.SeqLen, ModelMetadataKeys.ReadMaxPositions(model));
    }

    [TestMethod]
    public void Generate_PastTheContext_StopsAtTheLastPositionWithoutError()
    {
        using var dir = new TempDir();
        using TextGenerator generator = TextGenerator.Create(SmallModel(dir, withMetadata: true));
        int[] prompt = [1, 5, 9];

        GenerationResult result = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 100 });

        Assert.AreEqual(Context, generator.MaxPositions);
        // The run that fills position Context-1 still yields a token: Context - prompt + 1 new tokens in all.
        Assert.HasCount(Context - prompt.Length + 1, result.NewTokens);
        Assert.IsTrue(result.EndedAtContextLimit);
    }

    [TestMethod]
    public void Generate_WithoutMetadata_OrtFailsExactlyOnePastTheRecordedContext()
    {
        using var dir = new TempDir();
        using TextGenerator generator = TextGenerator.Create(SmallModel(dir, withMetadata: false));
        int[] prompt = [1, 5, 9];
        Assert.IsNull(generator.MaxPositions);

        GenerationResult full = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = Context - prompt.Length + 1 });
        Assert.HasCount(Context - prompt.Length + 1, full.NewTokens, "the last position is usable");
        Assert.IsFalse(full.EndedAtContextLimit);
        Assert.ThrowsExactly<LoraException>(() => generator.Generate(prompt, new GenerationOptions { MaxNewTokens = Context - prompt.Length + 2 }));
    }

    [TestMethod]
    public void Generate_PromptLongerThanTheContext_ThrowsBeforeRunning()
    {
        using var dir = new TempDir();
        using TextGenerator generator = TextGenerator.Create(SmallModel(dir, withMetadata: true));
        int steps = 0;

        var e = Assert.ThrowsExactly<LoraException>(() => generator.Generate(Enumerable.Range(1, Context + 1).ToArray(), new GenerationOptions { MaxNewTokens = 4 }, onStep: (_, _) => steps++));

        StringAssert.Contains(e.Message, $"holds {Context} positions");
        Assert.AreEqual(0, steps);
    }

    [TestMethod]
    public void Train_SeqLengthBeyondTheOnnxModelsContext_FailsBeforeTraining()
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"Tom saw a red bird.\"}"]);
        string model = dir.File("stories.onnx");
        Llama2cConverter.ConvertToFile(Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin"), model);
        var options = new TrainOptions
        {
            Model = model, Tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model"), Data = data,
            OutputDir = dir.File("run"), SeqLength = 1024, BatchSize = 1, MaxSteps = 1,
        };

        // An option value beyond the model, not bad data: exit 2 (issue 16).
        var e = Assert.ThrowsExactly<Onnx.Lora.Data.ConfigException>(() => new TrainingRunner(options).Run(TestContext.CancellationToken));

        StringAssert.Contains(e.Message, "seq_length 1024");
        StringAssert.Contains(e.Message, "512 positions");
    }

    [TestMethod]
    public void GenerateVerb_ModelLargerThanTheMemoryLimit_ExitsWithResourceLimitBeforeLoading()
    {
        // stories260K holds 2.1 MiB of weights; a 1 MiB budget cannot hold them. A child process, so the limit
        // (an environment variable) touches no other test.
        (int exit, string error) = Onnx.Lora.Tests.Support.CliProcess.RunCapturingErrors(
            ["generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--prompt", "Once"],
            new Dictionary<string, string> { [Onnx.Lora.Ir.Resources.SystemResources.MemoryLimitVariable] = "1MiB" });

        TestContext.WriteLine(error);
        Assert.AreEqual(7, exit, "ResourceLimit exit code");
        StringAssert.Contains(error, "needs ~");
        StringAssert.Contains(error, "is available (ONNX_LORA_MEMORY_LIMIT)");
        Assert.HasCount(1, error.Split('\n', StringSplitOptions.RemoveEmptyEntries), error);
    }

    private static string SmallModel(TempDir dir, bool withMetadata)
    {
        using Model model = TorchLlamaBuilder.Build(new LlamaConfig { KvCache = true, MaxPositions = Context, Vocab = 32 });
        if (!withMetadata)
        {
            model.MetadataProps.RemoveAll(p => p.Key == ModelMetadataKeys.MaxPositions);
        }

        string path = dir.File(withMetadata ? "small.onnx" : "small-no-metadata.onnx");
        OnnxWriter.Save(model, path);
        return path;
    }
}
