using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Injects LoRA with the real rewriter (<see cref="LoraInjector"/>, all linear projections) for the trainer tests.
/// The injector starts B at zero, which makes every gradient w.r.t. A zero; gradient checks pass
/// <c>nonZeroB: true</c> to give B seeded values of ±0.1 so both A and B have informative gradients.
/// </summary>
internal static class LoraForTraining
{
    public static LoraManifest Inject(Model model, int rank, double alpha, int seed, bool nonZeroB)
    {
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = rank, Alpha = alpha, Seed = seed, Targets = [LoraOptions.AllLinear] });
        if (nonZeroB)
        {
            var rng = new Random(seed);
            foreach (LoraModuleInfo m in manifest.Modules)
            {
                float[] b = Enumerable.Range(0, (int)(m.Rank * m.OutFeatures)).Select(_ => (float)((rng.NextDouble() * 2 - 1) * 0.1)).ToArray();
                model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], b));
            }
        }

        return manifest;
    }

    /// <summary>
    /// Training artifacts of the real stories260K (fixture reference ONNX, named weights) with all-linear LoRA r=4,
    /// alpha 8 and seeded non-zero B (so every A and B gets a gradient from the first step), built in <paramref name="temp"/>.
    /// </summary>
    public static TrainingArtifacts StoriesArtifacts(TempDir temp, int seed)
    {
        string loraPath = temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx")))
        {
            Inject(model, rank: 4, alpha: 8, seed: seed, nonZeroB: true);
            OnnxWriter.Save(model, loraPath);
        }

        return TrainingArtifacts.Build(loraPath, temp.File("artifacts"));
    }
}
