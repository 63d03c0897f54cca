using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Trainer.Schedules;

namespace Onnx.Lora.Tests.Runner;

/// <summary>LoRA+ through the full runner: B learns at ratio × A's learning rate.</summary>
[TestClass]
public sealed class LoraPlusTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Run_LoraPlusRatio_FirstStepMovesBByRatioTimesTheLearningRateOfA()
    {
        // First AdamW step, no clipping, constant lr: m̂ = g, v̂ = g², so the gradient part of the update is
        // lr·g/(|g|+ε) = ±lr wherever |g| ≫ ε, and decoupled decay multiplies θ by (1 − lr·wd).
        // B starts at 0: no decay, |ΔB| = ratio·lr. A gets no gradient while B = 0: A₁ = A₀·(1 − lr·wd).
        const double Lr = 1e-3, Ratio = 16, Decay = 0.5;
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, new[] { "The cat sat on the red mat.", "Lily saw a blue bird in the sky." }.Select(l => JsonSerializer.Serialize(new { text = l })));
        var options = new TrainOptions
        {
            Model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin"),
            Tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model"),
            Data = data,
            OutputDir = dir.File("run"),
            SeqLength = 32,
            BatchSize = 2,
            MaxSteps = 1,
            LearningRate = Lr,
            LoraPlusRatio = Ratio,
            WeightDecay = Decay,
            MaxGradNorm = 0,
            Schedule = ScheduleKind.Constant,
            WarmupSteps = 0,
            LoraRank = 2,
            LoraAlpha = 4,
            // q/v only, as when this was the default: all-linear adds modules whose first gradients are near Adam's ε.
            LoraTargets = ["q_proj", "v_proj"],
            SaveSteps = 1,
            IntraOpThreads = 1,
            Seed = 5,
        };

        TrainingSummary s = new TrainingRunner(options).Run(TestContext.CancellationToken);

        TrainingCheckpoint checkpoint = CheckpointStore.Load(s.LastCheckpoint!);
        string loraModel = Path.Combine(Path.GetDirectoryName(s.LoraModel)!, TrainingRunner.ArtifactsFolder, TrainingRunner.LoraModelFile);
        using Model initial = OnnxReader.Load(loraModel);
        int checkedB = 0, checkedA = 0;
        foreach (NamedTensor t in checkpoint.Parameters)
        {
            float[] before = initial.Graph.Initializers[t.Name].Initializer!.ToArray<float>();
            if (t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal))
            {
                Assert.IsTrue(before.All(v => v == 0), $"{t.Name} starts at zero");
                int moved = 0;
                foreach (float v in t.Data.Where(v => v != 0))
                {
                    Assert.AreEqual(Ratio * Lr, Math.Abs(v), Ratio * Lr * 1e-3, $"{t.Name}: |ΔB| = ratio·lr");
                    moved++;
                }

                Assert.IsGreaterThan(t.Data.Length / 2, moved, $"{t.Name}: most of B should move");
                checkedB++;
            }
            else if (t.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            {
                for (int i = 0; i < before.Length; i++)
                {
                    Assert.AreEqual(before[i] * (1 - (Lr * Decay)), t.Data[i], 1e-7, $"{t.Name}[{i}]: A₁ = A₀·(1 − lr·wd) at A's lr");
                }

                checkedA++;
            }
        }

        Assert.IsGreaterThan(0, checkedA);
        Assert.AreEqual(checkedA, checkedB);
    }
}
