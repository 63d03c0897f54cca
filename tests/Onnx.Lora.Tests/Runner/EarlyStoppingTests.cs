using System.Text.Json;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Trainer.Schedules;

namespace Onnx.Lora.Tests.Runner;

/// <summary>Early stopping through the full runner on stories260K.</summary>
[TestClass]
public sealed class EarlyStoppingTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Run_EvalLossNeverImproves_StopsAfterPatienceEvalsAndReportsFirstLossAsBest()
    {
        // lr = 1e-30: AdamW moves B from 0 to ~1e-30, far below float resolution of the activations, so every eval
        // loss equals the step-0 one exactly; "improved" needs a strictly lower loss, so none of them counts.
        const int Patience = 2, EvalSteps = 2;
        using var dir = new TempDir();
        string[] lines = ["The cat sat on the red mat.", "The dog ran to the big tree.", "Lily saw a blue bird in the sky.", "Tom had a ball."];
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, lines.Select(l => JsonSerializer.Serialize(new { text = l })));
        var options = new TrainOptions
        {
            Model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin"),
            Tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model"),
            Data = data,
            EvalData = data,
            OutputDir = dir.File("run"),
            SeqLength = 32,
            BatchSize = 2,
            MaxSteps = 20,
            LearningRate = 1e-30,
            Schedule = ScheduleKind.Constant,
            WarmupSteps = 0,
            Lora = new LoraConfig { Rank = 2, Alpha = 4 },
            EvalSteps = EvalSteps,
            EarlyStoppingPatience = Patience,
            SaveSteps = 0,
            IntraOpThreads = 1,
            Seed = 7,
        };

        TrainingSummary s = new TrainingRunner(options).Run(TestContext.CancellationToken);

        Assert.AreEqual(RunOutcome.EarlyStopped, s.Outcome);
        Assert.AreEqual(Patience * EvalSteps, s.Steps, "stops at the eval that exhausts the patience, not at max_steps");
        var evals = File.ReadLines(Path.Combine(options.OutputDir, "metrics.jsonl"))
            .Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.GetProperty("kind").GetString() == "eval")
            .Select(e => (Step: e.GetProperty("step").GetInt32(), Loss: e.GetProperty("loss").GetDouble()))
            .ToArray();
        CollectionAssert.AreEqual(new[] { 0, 2, 4 }, evals.Select(e => e.Step).ToArray(), "step-0 eval, then one per eval_steps until patience runs out");
        Assert.IsTrue(evals.All(e => e.Loss == evals[0].Loss), $"eval losses should not move: {string.Join(", ", evals.Select(e => e.Loss))}");
        Assert.AreEqual(evals[0].Loss, s.BestEvalLoss, "the best eval loss reported is the first (never beaten) one");
    }
}
