using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// <see cref="CrossEntropyLowering"/>: the loss heads' SoftmaxCrossEntropyLoss, which ONNX Runtime runs as its function
/// body (four [N, V] buffers), against the lowered sum of log-sum-exp minus the label's score, both run by ORT.
/// </summary>
[TestClass]
public sealed class CrossEntropyLoweringTests
{
    private const int Batch = 4, Seq = 64, Vocab = 8192;

    [TestMethod]
    public void MakeEvaluation_LoweredLoss_EqualsTheFunctionBodyAndHoldsOneVocabBuffer()
    {
        using var temp = new TempDir();
        (double lowered, long loweredPeak) = RunEvaluation(lower: true, temp.File("lowered"));
        (double body, long bodyPeak) = RunEvaluation(lower: false, temp.File("body"));

        Console.WriteLine($"CELOWER | loss {lowered:F7} lowered / {body:F7} function body | arena peak {loweredPeak >> 10} / {bodyPeak >> 10} KiB");
        Assert.AreEqual(body, lowered, 1e-6 * Math.Abs(body), "the same max-shifted log-sum-exp, summed in another order");

        // [256 tokens, 8192] floats = 8 MiB a buffer: the function body's transposed copy, LogSoftmax output and copy back.
        const long buffer = (long)Batch * Seq * Vocab * sizeof(float);
        Assert.IsLessThan(bodyPeak - (2 * buffer), loweredPeak, "at least two [N, V] buffers fewer");
    }

    [TestMethod]
    public void MakeTraining_LoweredLoss_LeavesNoSoftmaxCrossEntropyLossAndTheSameGradients()
    {
        using Model lowered = Training(lower: true, out string[] trainable);
        using Model body = Training(lower: false, out _);
        Assert.IsFalse(lowered.Graph.Nodes.Any(n => n.Is("SoftmaxCrossEntropyLoss")));
        Assert.IsTrue(body.Graph.Nodes.Any(n => n.Is("SoftmaxCrossEntropyLoss")));

        float[][] a = Run(lowered, [TrainingGraph.LossOutput, .. trainable.Select(TrainingGraph.GradientOutput)]);
        float[][] b = Run(body, [TrainingGraph.LossOutput, .. trainable.Select(TrainingGraph.GradientOutput)]);
        AssertClose(b, a);
    }

    /// <summary>
    /// Loss within 1e-6 relative, each gradient within 1e-5 of its largest entry: the head's gradient is computed per
    /// chunk in the forward (<see cref="LinearCrossEntropy"/>), the same sums in another order and kernel.
    /// </summary>
    private static void AssertClose(float[][] expected, float[][] actual)
    {
        Assert.AreEqual(expected[0][0], actual[0][0], 1e-6 * Math.Abs(expected[0][0]), "loss");
        for (int i = 1; i < expected.Length; i++)
        {
            double scale = expected[i].Max(Math.Abs);
            double worst = expected[i].Zip(actual[i], (e, a) => Math.Abs(e - a)).Max();
            Assert.IsLessThanOrEqualTo(1e-5 * scale, worst, $"output {i}: largest difference {worst:E2} of {scale:E2}");
        }
    }

    [TestMethod]
    public void MakeTraining_FrozenHead_NeverHoldsAVocabBufferAndMatchesTheFunctionBody()
    {
        using var temp = new TempDir();
        (float[][] fused, long fusedPeak, Model fusedModel) = ProfiledTraining(lower: true, temp.File("fused"));
        (float[][] body, long bodyPeak, Model bodyModel) = ProfiledTraining(lower: false, temp.File("body"));
        using (fusedModel)
        using (bodyModel)
        {
            Assert.IsFalse(fusedModel.Graph.Nodes.Any(n => n.Is("MatMul") && n.Outputs[0].Uses.Any(u => u.Node.Is("Reshape") && u.Node.Outputs[0].Uses.Any(r => r.Node.Is("GatherElements")))),
                "the head's MatMul runs per chunk, no whole logits");
        }

        const long buffer = (long)Batch * Seq * Vocab * sizeof(float);
        Console.WriteLine($"CEHEAD | arena peak {fusedPeak >> 10} KiB fused, {bodyPeak >> 10} KiB function body; one [N, V] buffer {buffer >> 10} KiB; loss {fused[0][0]:F6} / {body[0][0]:F6}");
        Assert.IsLessThan(buffer, fusedPeak, "the largest loss buffers are [N / chunks, V]");
        Assert.IsLessThan(bodyPeak - buffer, fusedPeak, "at least one [N, V] buffer fewer than the function body");
        AssertClose(body, fused);
    }

    private static Model Builder(bool lower, out LossOutputs loss)
    {
        Model model = TorchLlamaBuilder.Build(new LlamaConfig { Layers = 1, Vocab = Vocab, TiedEmbeddings = false, Naming = InitializerNaming.Named });
        loss = Attach(model, lower);
        return model;
    }

    /// <summary>The causal LM loss; unmarked (run as ORT's function body) unless <paramref name="lower"/>.</summary>
    private static LossOutputs Attach(Model model, bool lower)
    {
        LossOutputs loss = new CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));
        if (!lower)
        {
            foreach (Node n in model.Graph.Nodes.Where(n => n.Is("SoftmaxCrossEntropyLoss")))
            {
                n.MetadataProps.RemoveAll(p => p.Key == CrossEntropyLowering.Marker);
            }
        }

        return loss;
    }

    /// <summary>All-linear LoRA but the head (PEFT's all-linear leaves it out), the training graph built.</summary>
    private static Model Training(bool lower, out string[] trainable)
    {
        Model model = TorchLlamaBuilder.Build(new LlamaConfig { Layers = 1, Vocab = Vocab, TiedEmbeddings = false, Naming = InitializerNaming.Named });
        trainable = [.. LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 7, nonZeroB: true).TrainableTensors()];
        Assert.IsFalse(trainable.Any(t => t.Contains("lm_head", StringComparison.Ordinal)));
        LossOutputs loss = Attach(model, lower);
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable);
        return model;
    }

    /// <summary><see cref="Training"/>, run once under the profiler.</summary>
    private static (float[][] Outputs, long Peak, Model Model) ProfiledTraining(bool lower, string prefix)
    {
        Model model = Training(lower, out string[] trainable);
        using SessionOptions options = OrtProfiling.Options(prefix);
        using var session = new InferenceSession(OnnxWriter.ToBytes(model), options);
        float[][] outputs = Run(session, [TrainingGraph.LossOutput, .. trainable.Select(TrainingGraph.GradientOutput)]);
        return (outputs, OrtProfiling.PeakArenaInUse(session), model);
    }

    private static (double Loss, long Peak) RunEvaluation(bool lower, string prefix)
    {
        using Model model = Builder(lower, out LossOutputs loss);
        TrainingGraph.MakeEvaluation(model, loss.Loss, loss.TokenCount, []);
        using SessionOptions options = OrtProfiling.Options(prefix);
        using var session = new InferenceSession(OnnxWriter.ToBytes(model), options);
        double value = Run(session, [TrainingGraph.LossOutput])[0][0];
        return (value, OrtProfiling.PeakArenaInUse(session));
    }

    private static float[][] Run(Model model, string[] outputs)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using var session = new InferenceSession(OnnxWriter.ToBytes(model), options);
        return Run(session, outputs);
    }

    /// <summary>Seeded ids, labels with ignored (−100) positions and right padding in the last row.</summary>
    private static float[][] Run(InferenceSession session, string[] outputs)
    {
        var rng = new Random(11);
        long[] ids = [.. Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(0, Vocab))];
        var feeds = new Dictionary<string, long[]>
        {
            ["input_ids"] = ids,
            ["attention_mask"] = [.. ids.Select((_, i) => i >= (Batch - 1) * Seq && i % Seq >= Seq - 5 ? 0L : 1L)],
            ["labels"] = [.. ids.Select((t, i) => i % Seq < 3 || (i >= (Batch - 1) * Seq && i % Seq >= Seq - 5) ? -100 : t)],
        };
        return OrtRunner.RunBatch(session, feeds, [Batch, Seq], outputs);
    }
}
