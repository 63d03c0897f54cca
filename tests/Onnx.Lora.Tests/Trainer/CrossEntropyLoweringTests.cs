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
        Assert.AreEqual(b[0][0], a[0][0], 1e-6 * Math.Abs(b[0][0]));
        for (int i = 1; i < a.Length; i++)
        {
            CollectionAssert.AreEqual(b[i], a[i], $"{trainable[i - 1]}: the backward reads the scores, not the lowered loss");
        }
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

    private static Model Training(bool lower, out string[] trainable)
    {
        Model model = TorchLlamaBuilder.Build(new LlamaConfig { Layers = 1, Vocab = Vocab, TiedEmbeddings = false, Naming = InitializerNaming.Named });
        trainable = [.. LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 7, nonZeroB: true).TrainableTensors()];
        LossOutputs loss = Attach(model, lower);
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable);
        return model;
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
