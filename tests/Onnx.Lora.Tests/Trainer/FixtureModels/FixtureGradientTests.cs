using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer.FixtureModels;

/// <summary>
/// Whole-model gradient check on fixture decoders made by other tools, LoRA injected by the rewriter on all linear
/// layers and B set to seeded random values (so both A and B get non-zero gradients): the training model's gradient
/// w.r.t. sampled A/B entries against central differences of the evaluation model's loss (a separate graph without
/// backward nodes). The loss is float32 in every case (half-precision logits are cast up first).
/// </summary>
[TestClass]
public sealed class FixtureGradientTests
{
    // fp32 graphs: loss rounding ~1e-6 over h = 1e-2 gives ~1e-4 absolute noise, so relative errors are taken against
    // at least 5e-2 and must stay under 1e-2 (as the stories260K and GenAI builder checks). The fp32 llama uses
    // h = 3e-3: with B drawn in ±0.5 its O(h²) truncation at h = 1e-2 measured 1.1e-2 (3.6e-3 at h = 3e-3).
    // fp16 graphs: activations are rounded to 2^-11 relative, so a step changes the loss in quantized jumps; h = 5e-2
    // keeps the jumps small against the difference, and the bound is 2e-2 relative against a floor of 5e-2 (measured:
    // 7.3e-3 on the MHA llama). The batch has no padding here: a left-padded query row has every key masked by an
    // additive −10000 (or fp16 −65504), and scores added to such offsets are quantized to ~1e-3, which finite
    // differences see as noise (measured 3e-2 on GPT-2 layer 0) while the analytic gradient is smooth. Training with
    // padding is covered by FixtureTrainingTests.
    [TestMethod]
    [DataRow("ortgenai-tiny-random-gpt2-fp32/past.onnx", 1000, 1e-2, 1e-2)]
    [DataRow("ortgenai-tiny-random-llama-fp32/model.onnx", 256, 3e-3, 1e-2)]
    [DataRow("ortgenai-tiny-random-llama-fp16/model.onnx", 256, 5e-2, 2e-2)]
    [DataRow("ortgenai-tiny-gqa/model.onnx", 256, 5e-2, 2e-2)]
    [DataRow("ortgenai-tiny-qwen35/decoder.onnx", 256, 5e-2, 2e-2)]
    public void ComputeGradients_FixtureWithLora_MatchesFiniteDifferences(string fixture, int vocab, double step, double tolerance)
    {
        using var temp = new TempDir();
        TrainingArtifacts artifacts = FixtureTrainingTests.BuildArtifacts(temp, fixture);
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
        var rng = new Random(29);
        foreach (TrainableTensor t in session.Parameters.Where(t => t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
        {
            session.SetParameter(t.Name, TestArrays.Uniform((int)t.ElementCount, rng, 0.5f));
        }

        TrainingBatch batch = FixtureTrainingTests.Batch(vocab, 9, leftPadding: false);
        EvalResult withGrad = session.ComputeGradients(batch);
        Assert.AreEqual(withGrad.Loss, session.Evaluate(batch).Loss, 1e-4, "training and evaluation graphs compute the same loss");

        double worst = MaxRelativeError(session, batch, step, fixture);
        Console.WriteLine($"FIXTUREGRAD | {fixture} | loss {withGrad.Loss:F4} | max rel error {worst:E2}");
        Assert.IsLessThan(tolerance, worst);
    }

    /// <summary>Largest |analytic − numeric| / max(|a|, |n|, 5e-2) over the largest-gradient entry of every third tensor.</summary>
    internal static double MaxRelativeError(LoraTrainingSession session, TrainingBatch batch, double step, string tag)
    {
        var rng = new Random(29);
        foreach (TrainableTensor t in session.Parameters.Where(t => t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
        {
            if (session.GetParameter(t.Name).IndexOfAnyExcept(0f) < 0)
            {
                session.SetParameter(t.Name, TestArrays.Uniform((int)t.ElementCount, rng, 0.5f));
            }
        }

        session.ComputeGradients(batch);
        const double Floor = 5e-2;
        double worst = 0;
        int count = 0;
        foreach (TrainableTensor t in session.Parameters.Where((_, i) => i % 3 == 0))
        {
            float[] gradient = session.GetGradient(t.Name).ToArray();
            // The entry with the largest gradient, so the difference is well above the loss's rounding.
            int i = Array.IndexOf(gradient, gradient.MaxBy(Math.Abs));
            double analytic = gradient[i];
            double numeric = SessionGradCheck.CentralDifference(session, batch, t.Name, i, step);
            double rel = SessionGradCheck.RelativeError(analytic, numeric, Floor);
            Console.WriteLine($"FIXTUREGRAD | {tag} | {t.Name}[{i}] | analytic {analytic:E4} | numeric {numeric:E4} | rel {rel:E2}");
            worst = Math.Max(worst, rel);
            count++;
        }

        Console.WriteLine($"FIXTUREGRAD | {tag} | max rel error {worst:E2} over {count} entries");
        return worst;
    }
}
