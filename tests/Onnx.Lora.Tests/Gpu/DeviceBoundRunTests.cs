using Onnx.Lora.Tests.Support;
using Onnx.Lora.Tests.Trainer;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Gpu;

/// <summary>
/// The IOBinding path that CUDA / TensorRT training takes (parameters bound once per change, outputs bound to the
/// host buffers), run on the CPU provider against the plain Run path: the same numbers, bit for bit, over steps with
/// gradient accumulation, a parameter overwrite and evaluation. No GPU here: this checks the binding logic (which
/// outputs, when parameters are rebound), not the device copies.
/// </summary>
[TestClass]
public sealed class DeviceBoundRunTests
{
    private static TempDir? s_temp;
    private static TrainingArtifacts? s_artifacts;

    [ClassInitialize]
    public static void BuildArtifacts(TestContext context)
    {
        s_temp = new TempDir();
        s_artifacts = LoraForTraining.StoriesArtifacts(s_temp, seed: 3);
    }

    [ClassCleanup]
    public static void Cleanup() => s_temp?.Dispose();

    [TestMethod]
    public void BoundRun_StepsAccumulationOverwriteAndEval_SameNumbersAsPlainRun()
    {
        (List<float> plain, float[] plainParams) = Trace(bind: false);
        (List<float> bound, float[] boundParams) = Trace(bind: true);

        CollectionAssert.AreEqual(plain, bound);
        CollectionAssert.AreEqual(plainParams, boundParams);
        Assert.IsTrue(plain.Distinct().Count() > 4, "the trace must move (losses and gradients change from step to step)");
    }

    private static (List<float> Trace, float[] Parameters) Trace(bool bind)
    {
        using LoraTrainingSession session = LoraTrainingSession.Create(s_artifacts!, new TrainingSessionOptions { BindOnCpu = bind, LearningRate = 5e-3f });
        var trace = new List<float>();
        TrainingBatch[] batches = [Batch(1), Batch(2), Batch(3)];
        string firstB = session.Parameters.First(p => p.Name.Contains("lora_B", StringComparison.Ordinal)).Name;
        for (int step = 0; step < 3; step++)
        {
            TrainStepResult r = session.Step([batches[step % 3], batches[(step + 1) % 3]]);
            trace.AddRange([r.Loss, r.GradientNorm, session.Evaluate(batches[0]).Loss]);
            trace.AddRange(session.GetGradient(firstB).ToArray().Take(8));
        }

        // A checkpoint-style overwrite must reach the next run (the bound path re-binds after it).
        session.SetParameter(firstB, new float[session.GetParameter(firstB).Length]);
        trace.Add(session.ComputeGradients(batches[1]).Loss);
        trace.Add(session.Evaluate(batches[2]).Loss);
        return (trace, session.Parameters.SelectMany(p => session.GetParameter(p.Name).ToArray()).ToArray());
    }

    private static TrainingBatch Batch(int seed)
    {
        var random = new Random(seed);
        long[] ids = Enumerable.Range(0, 2 * 12).Select(_ => (long)random.Next(3, 512)).ToArray();
        return new TrainingBatch { InputIds = ids, BatchSize = 2, SequenceLength = 12 };
    }
}
