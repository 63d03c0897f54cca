using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Evaluation;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Runner;

/// <summary>
/// <c>eval</c> scores with the model's own inference graph and C# cross-entropy; the trainer's eval loss comes from its
/// generated loss graph (KV cache removed, log-softmax in ONNX). The two must agree on the same model and data.
/// </summary>
[TestClass]
public sealed class EvalVerbTests
{
    // Two float32 forward graphs of the same model (inference with an empty past vs the training graph) and float32 vs
    // double log-softmax: observed |diff| ~1e-6 on losses near 4; 2e-5 leaves room without hiding a masking or shift bug
    // (one token more or less changes the mean by ~1e-2 here).
    private const double LossTolerance = 2e-5;

    private static readonly string s_root = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K");

    public TestContext TestContext { get; set; } = null!;

    private static string WriteJsonl(TempDir dir, string name, IEnumerable<string> lines)
    {
        string path = dir.File(name);
        File.WriteAllLines(path, lines.Select(l => JsonSerializer.Serialize(new { text = l })));
        return path;
    }

    [TestMethod]
    public void Evaluate_TrainedAndUntrainedModel_EqualsTheTrainersEvalLoss()
    {
        using var dir = new TempDir();
        string[] lines = ["The cat sat on the red mat.", "Tom had a ball. He liked to play.", "Lily saw a blue bird in the sky.", "The dog ran to the big tree."];
        var options = new TrainOptions
        {
            Model = Path.Combine(s_root, "stories260K.bin"),
            Tokenizer = Path.Combine(s_root, "tok512.model"),
            Data = WriteJsonl(dir, "train.jsonl", lines),
            EvalData = WriteJsonl(dir, "eval.jsonl", lines.Select(l => l.Replace("The", "A", StringComparison.Ordinal))),
            OutputDir = dir.File("run"),
            SeqLength = 16,
            BatchSize = 2,
            MaxSteps = 4,
            LearningRate = 5e-3,
            LoraRank = 4,
            IntraOpThreads = 1,
        };
        TrainingSummary s = new TrainingRunner(options).Run(TestContext.CancellationToken);
        TextTokenizer tokenizer = TextTokenizer.Load(options.Tokenizer);

        EvaluationResult trained = ModelEvaluator.Evaluate(s.LoraModel, [], options.EvalData, tokenizer, options);
        EvaluationResult untrained = ModelEvaluator.Evaluate(Path.Combine(options.OutputDir, TrainingRunner.ArtifactsFolder, TrainingRunner.LoraModelFile), [], options.EvalData, tokenizer, options);
        TestContext.WriteLine($"trained {trained.Loss:R} vs {s.LastEvalLoss:R}; untrained {untrained.Loss:R} vs {s.FirstEvalLoss:R}");

        Assert.AreEqual(s.LastEvalLoss!.Value, trained.Loss, LossTolerance);
        Assert.AreEqual(s.FirstEvalLoss!.Value, untrained.Loss, LossTolerance);
        Assert.IsGreaterThan(1e-3, Math.Abs(trained.Loss - untrained.Loss), "training moved the loss (the comparison is not vacuous)");
        Assert.AreEqual(4, trained.Examples);

        (int code, string output, string error) = CliRunner.Run("eval", s.LoraModel, "--data", options.EvalData, "--tokenizer", options.Tokenizer, "--seq-length", "16", "--json");
        Assert.AreEqual(0, code, error);
        using JsonDocument json = JsonDocument.Parse(output);
        Assert.AreEqual(trained.Loss, json.RootElement.GetProperty("loss").GetDouble(), 1e-12);
        Assert.AreEqual(trained.TargetTokens, json.RootElement.GetProperty("target_tokens").GetInt64());
        Assert.AreEqual(Math.Exp(trained.Loss), json.RootElement.GetProperty("perplexity").GetDouble(), 1e-9);
    }

    [TestMethod]
    public void Eval_PlainOutput_PrintsLossPerplexityAndTokens()
    {
        using var dir = new TempDir();
        string data = WriteJsonl(dir, "d.jsonl", ["Once upon a time, there was a little girl named Lily."]);
        (int code, string output, string error) = CliRunner.Run("eval", Fixtures.Path("stories260K", "reference-onnx", "model.onnx"), "--data", data, "--tokenizer", Path.Combine(s_root, "tok512.model"));
        Assert.AreEqual(0, code, error);
        StringAssert.StartsWith(output, "loss ");
        StringAssert.Contains(output, "perplexity ");
        StringAssert.Contains(output, "target tokens ");
        double loss = double.Parse(output.Split(' ')[1], CultureInfo.InvariantCulture);
        Assert.IsLessThan(2.0, loss, "the pretrained TinyStories model knows its own opening line");
    }
}
