using Onnx.Lora.Injection;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// LoRA dropout on every linear layer: the gradient reaching an earlier layer passes through later layers' dropout
/// (their input x needs a gradient), so the branch's Dropout must expose its mask. With a ratio so small that nothing is
/// dropped (1e-7: the mask is all ones, the scale 1/(1 − 1e-7)), every gradient must equal the run without dropout.
/// </summary>
[TestClass]
public sealed class LoraDropoutGradientTests
{
    private static LoraTrainingSession Session(TempDir dir, string name, double dropout)
    {
        string path = dir.File(name + ".onnx");
        using (Model model = TorchLlamaBuilder.Build(new LlamaConfig { Layers = 3 }))
        {
            LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = [LoraOptions.AllLinear], Dropout = dropout, TrainingGraph = dropout > 0, Seed = 7 });
            OnnxWriter.Save(model, path);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, dir.File(name + "-artifacts"));
        return LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
    }

    [TestMethod]
    public void ComputeGradients_DropoutOnEveryLayerWithNothingDropped_EqualsNoDropout()
    {
        using var dir = new TempDir();
        using LoraTrainingSession plain = Session(dir, "plain", 0);
        using LoraTrainingSession dropped = Session(dir, "dropout", 1e-7);
        // Nonzero B everywhere, so the LoRA branches (and their dropout) carry gradient to the layers before them.
        int seed = 11;
        foreach (TrainableTensor t in plain.Parameters)
        {
            float[] values = TestArrays.Uniform((int)t.ElementCount, seed++, 0.2f);
            plain.SetParameter(t.Name, values);
            dropped.SetParameter(t.Name, values);
        }

        var rng = new Random(5);
        var batch = new TrainingBatch { InputIds = Enumerable.Range(0, 16).Select(_ => (long)rng.Next(0, 256)).ToArray(), BatchSize = 2, SequenceLength = 8 };
        float expectedLoss = plain.ComputeGradients(batch).Loss;
        float actualLoss = dropped.ComputeGradients(batch).Loss;
        Assert.AreEqual(expectedLoss, actualLoss, 1e-5f * Math.Abs(expectedLoss));
        foreach (TrainableTensor t in plain.Parameters)
        {
            float[] expected = plain.GetGradient(t.Name).ToArray();
            float[] actual = dropped.GetGradient(t.Name).ToArray();
            float scale = expected.Max(MathF.Abs);
            Assert.IsGreaterThan(0f, scale, $"{t.Name}: the gradient is not vacuous");
            // float32 reassociation only (the scale 1/(1 − 1e-7) rounds to 1 + 1.2e-7).
            Assert.IsLessThanOrEqualTo(1e-5f * scale, ErrorMetrics.MaxAbsDiff(expected, actual), t.Name);
        }
    }
}
