using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Whole-model check on GenAI-style graphs from <see cref="GenAiLlamaBuilder"/> (GroupQueryAttention with in-op
/// rotary, SkipSimplifiedLayerNormalization, KV cache, optionally int4 MatMulNBits projections), with LoRA on every
/// projection: the artifacts drop the KV cache, and the session's gradients w.r.t. sampled A/B entries must match
/// central differences of the evaluation model's loss. Those ops are float32-only in ORT's CPU build, so the check
/// runs in fp32 (h = 1e-2; relative error measured against at least 5e-2 to stay above fp32 rounding of the loss).
/// </summary>
[TestClass]
public sealed class GenAiGradientTests
{
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Session_GenAiLlamaWithLora_GradientsMatchFiniteDifferences(bool int4)
    {
        using var temp = new TempDir();
        string path = temp.File("genai-lora.onnx");
        using (Model model = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Int4 = int4, BlockSize = 32 }))
        {
            var manifest = LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 13, nonZeroB: true);
            Assert.AreEqual(2 * 7, manifest.Modules.Count, "7 projections in each of 2 layers");
            OnnxWriter.Save(model, path);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, temp.File("artifacts"));
        Assert.IsEmpty(artifacts.EmptyPastInputs, "GQA takes 'no past' as omitted inputs");
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
        var rng = new Random(17);
        long[] ids = Enumerable.Range(0, 2 * 9).Select(_ => (long)rng.Next(0, 256)).ToArray();
        var batch = new TrainingBatch { InputIds = ids, BatchSize = 2, SequenceLength = 9 };
        EvalResult withGrad = session.ComputeGradients(batch);
        Assert.AreEqual(withGrad.Loss, session.Evaluate(batch).Loss, 1e-5, "training and evaluation graphs compute the same loss");

        const double Step = 1e-2, Floor = 5e-2;
        double worst = 0;
        foreach (TrainableTensor t in session.Parameters.Where((_, i) => i % 3 == 0))
        {
            int i = rng.Next(session.GetParameter(t.Name).Length);
            double analytic = session.GetGradient(t.Name)[i];
            double numeric = SessionGradCheck.CentralDifference(session, batch, t.Name, i, Step);
            double rel = SessionGradCheck.RelativeError(analytic, numeric, Floor);
            worst = Math.Max(worst, rel);
        }

        Console.WriteLine($"GENAI | int4={int4} | loss {withGrad.Loss:F4} | max rel error {worst:E2}");
        Assert.IsLessThan(1e-2, worst);
    }
}
