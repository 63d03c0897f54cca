using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Rewriter;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Whole-model gradient check of LoRA on Conv1d and on the embedding (Gather → ScatterND-add to A) of
/// <see cref="ConvLmBuilder"/> under the causal LM loss: for every LoRA tensor, its largest-gradient entry against
/// central differences of the evaluation loss (float32, h = 3e-3, relative error ≤ 1e-2 against a floor of 5e-2, as
/// the builder and fixture checks).
/// </summary>
[TestClass]
public sealed class ConvEmbeddingGradientTests
{
    [TestMethod]
    public void ComputeGradients_ConvAndEmbeddingLora_MatchesFiniteDifferences()
    {
        using var dir = new TempDir();
        string path = dir.File("lora.onnx");
        using (Model model = ConvLmBuilder.Build(new ConvLmConfig()))
        {
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 3, Alpha = 6, Targets = ["model.embed_tokens", "model.conv1", "model.conv2"] });
            // Random A and B everywhere (the embedding starts from A = 0, which would leave B's gradient zero).
            LoraTestSupport.RandomizeAdapters(model, manifest, seed: 7, scale: 0.4f);
            OnnxWriter.Save(model, path);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, dir.File("artifacts"), new TrainingArtifactsOptions { Loss = new CausalLmLoss() });
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
        TrainingBatch batch = FixtureModels.FixtureTrainingTests.Batch(256, 9, leftPadding: false);
        session.ComputeGradients(batch);
        double worst = 0;
        foreach (TrainableTensor t in session.Parameters)
        {
            float[] gradient = session.GetGradient(t.Name).ToArray();
            int i = Array.IndexOf(gradient, gradient.MaxBy(Math.Abs));
            double numeric = SessionGradCheck.CentralDifference(session, batch, t.Name, i, 3e-3);
            double rel = SessionGradCheck.RelativeError(gradient[i], numeric, 5e-2);
            Console.WriteLine($"CONVGRAD | {t.Name}[{i}] | analytic {gradient[i]:E4} | numeric {numeric:E4} | rel {rel:E2}");
            Assert.AreNotEqual(0f, gradient[i], $"{t.Name} gets a gradient");
            worst = Math.Max(worst, rel);
        }

        Assert.AreEqual(6, session.Parameters.Count);
        Assert.IsLessThan(1e-2, worst);
    }
}
