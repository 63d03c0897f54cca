using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Trainer.FixtureModels;

/// <summary>
/// ORT GenAI's split VLM/LLM layout (the qwen35 fixture: embedding.onnx makes inputs_embeds, text.onnx takes them):
/// the chained graph computes what running the parts in turn computes, it trains from token ids, and the adapter it
/// writes belongs to text.onnx alone (merged into text.onnx by the exporter, run after embedding.onnx by ORT).
/// </summary>
[TestClass]
public sealed class SplitModelTrainingTests
{
    private static readonly string s_text = Fixtures.Path("ortgenai-tiny-qwen35", "text.onnx");
    private static readonly string s_embedding = Fixtures.Path("ortgenai-tiny-qwen35", "embedding.onnx");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    public TestContext TestContext { get; set; } = null!;

    private static SessionOptions Exact() => new() { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };

    // Runs embedding.onnx then text.onnx on the chained model's feeds: the reference the chained graph must equal.
    private static float[] RunParts(string textPath, Dictionary<string, NamedOnnxValue> feeds)
    {
        using SessionOptions options = Exact();
        using var embedding = new InferenceSession(s_embedding, options);
        var embeddingFeeds = OrtRunner.MakeInputs(embedding, 1, null);
        embeddingFeeds["input_ids"] = feeds["input_ids"];
        using var embeds = embedding.Run(embeddingFeeds.Values.ToList(), ["inputs_embeds"]);
        using var text = new InferenceSession(textPath, options);
        var textFeeds = text.InputMetadata.Keys.ToDictionary(n => n, n => n == "inputs_embeds" ? NamedOnnxValue.CreateFromTensor(n, embeds[0].AsTensor<Float16>()) : feeds[n]);
        using var outputs = text.Run(textFeeds.Values.ToList(), ["logits"]);
        return OrtRunner.ToFloats(outputs[0]);
    }

    private static float[] RunChained(string chainedPath, out Dictionary<string, NamedOnnxValue> feeds)
    {
        using SessionOptions options = Exact();
        using var session = new InferenceSession(chainedPath, options);
        feeds = OrtRunner.MakeInputs(session, 20261203, null);
        using var outputs = session.Run(feeds.Values.ToList(), ["logits"]);
        return OrtRunner.ToFloats(outputs[0]);
    }

    [TestMethod]
    public void AttachIfNeeded_Qwen35TextTakingInputsEmbeds_LogitsEqualRunningThePartsInTurn()
    {
        using var dir = new TempDir();
        string chained = dir.File("chained.onnx");
        using (Model model = OnnxReader.Load(s_text))
        using (Model? embedding = EmbeddingChain.AttachIfNeeded(model, s_text))
        {
            Assert.IsNotNull(embedding, "text.onnx takes inputs_embeds, so the embedding part is chained");
            CollectionAssert.Contains(model.Graph.Inputs.Select(v => v.Name).ToArray(), "input_ids");
            CollectionAssert.DoesNotContain(model.Graph.Inputs.Select(v => v.Name).ToArray(), "inputs_embeds");
            OnnxWriter.Save(model, chained);
        }

        float[] actual = RunChained(chained, out var feeds);
        float[] expected = RunParts(s_text, feeds);
        // The same ops on the same values in the same order: nothing may differ, not even in the last bit.
        Assert.AreEqual(0f, ErrorMetrics.MaxAbsDiff(expected, actual));
    }

    [TestMethod]
    public void AttachIfNeeded_DecoderTakingTokenIds_ChainsNothing()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("ortgenai-tiny-qwen35", "decoder.onnx"));
        Assert.IsNull(EmbeddingChain.AttachIfNeeded(model, Fixtures.Path("ortgenai-tiny-qwen35", "decoder.onnx")));
    }

    [TestMethod]
    public void Train_InputsEmbedsModelWithoutGenAiConfig_ExitsBadModelNamingTheMissingEmbedding()
    {
        using var dir = new TempDir();
        string text = dir.File("text.onnx");
        File.Copy(s_text, text);
        string data = WriteJsonl(dir, ["One day a cat sat."]);
        (int code, _, string error) = CliRunner.Run("train", "--model", text, "--tokenizer", s_tokenizer, "--data", data, "--output-dir", dir.File("run"), "--max-steps", "1");
        Assert.AreEqual(4, code, error);
        StringAssert.Contains(error, "inputs_embeds");
        StringAssert.Contains(error, "genai_config.json");
        Assert.IsFalse(Directory.Exists(dir.File("run/adapter")));
    }

    [TestMethod]
    public void Train_Qwen35TextPart_LossFallsOver30StepsAndAdapterMergesIntoTextOnnx()
    {
        using var dir = new TempDir();
        string[] lines = ["The cat sat on the mat.", "The dog ran to the tree.", "Lily saw a bird.", "Tom had a red ball."];
        var options = new TrainOptions
        {
            Model = s_text,
            Tokenizer = s_tokenizer,
            Data = WriteJsonl(dir, lines),
            OutputDir = dir.File("run"),
            SeqLength = 16,
            BatchSize = 4,
            MaxSteps = 30,
            LearningRate = 5e-2,
            Lora = new LoraConfig { Rank = 4, Alpha = 8, Targets = ["all-linear"] },
            SaveSteps = 0,
            IntraOpThreads = 1,
            Seed = 20261203,
        };
        TrainingSummary s = new TrainingRunner(options).Run(TestContext.CancellationToken);
        double[] losses = TrainLosses(s);
        TestContext.WriteLine($"loss {string.Join(", ", losses.Select(l => l.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)))}");
        Assert.HasCount(30, losses);
        // A random tiny model: its logits start near uniform (ln 1000 = 6.908) and move slowly (the fixture's
        // decoder.onnx, a separate random model trained the same way, falls 6.908 → 6.890). A cut gradient path or a
        // wrong sign would leave the loss flat or rising.
        Assert.IsTrue(losses.All(double.IsFinite));
        Assert.IsLessThan(losses.Take(3).Average() - 5e-3, losses.TakeLast(3).Average(), "30 steps on four repeated lines must lower the loss");

        // The adapter names text.onnx's modules, so the exporter merges it into the text part alone.
        string merged = dir.File("merged-text.onnx");
        (int code, _, string error) = CliRunner.Run("merge", s_text, "--adapter", s.AdapterDir!, "-o", merged);
        Assert.AreEqual(0, code, error);
        float[] expected = RunChained(s.LoraModel, out var feeds);
        float[] actual = RunParts(merged, feeds);
        float[] untrained = RunParts(s_text, feeds);
        double scale = expected.Max(v => Math.Abs((double)v));
        double mergeError = ErrorMetrics.MaxAbsDiff(expected, actual) / scale;
        double trainedShift = ErrorMetrics.MaxAbsDiff(expected, untrained) / scale;
        TestContext.WriteLine($"merged text.onnx vs trained chained LoRA model: max rel error {mergeError:E2}; trained vs base {trainedShift:E2}");
        // fp16 weights: the merge rounds W + s·BA to fp16 once (the repo's fp16 merge tolerance, 1e-2 of the largest logit).
        Assert.IsLessThanOrEqualTo(1e-2, mergeError);
        Assert.IsGreaterThan(3 * mergeError, trainedShift, "the trained adapter moves the logits far beyond the merge's rounding");
    }

    private static double[] TrainLosses(TrainingSummary s) => File.ReadLines(s.MetricsFile).Select(l => JsonDocument.Parse(l).RootElement)
        .Where(e => e.GetProperty("kind").GetString() == "train").Select(e => e.GetProperty("loss").GetDouble()).ToArray();

    private static string WriteJsonl(TempDir dir, IEnumerable<string> lines)
    {
        string path = dir.File("train.jsonl");
        File.WriteAllLines(path, lines.Select(l => JsonSerializer.Serialize(new { text = l })));
        return path;
    }
}
