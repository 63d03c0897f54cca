using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer.FixtureModels;

/// <summary>
/// Every decoder among ../shared/fixtures that takes token ids, with LoRA injected by the rewriter on all linear
/// layers (rank 4): the training artifacts build (KV cache removed, fused attention differentiated), run in ORT CPU,
/// and 20 AdamW steps on a fixed batch lower the loss. fp16 bases keep their fp16 forward; the float32 LoRA tensors
/// sit behind Casts.
/// </summary>
[TestClass]
public sealed class FixtureTrainingTests
{
    internal static TrainingArtifacts BuildArtifacts(TempDir temp, string fixture)
    {
        string path = temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(Fixtures.Path(fixture.Split('/'))))
        {
            LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = [LoraOptions.AllLinear], Seed = 3 });
            OnnxWriter.Save(model, path);
        }

        return TrainingArtifacts.Build(path, temp.File("artifacts"));
    }

    internal static TrainingBatch Batch(int vocab, int seed, bool leftPadding = true)
    {
        var rng = new Random(seed);
        const int Rows = 2, Seq = 8;
        long[] ids = Enumerable.Range(0, Rows * Seq).Select(_ => (long)rng.Next(0, vocab)).ToArray();
        // Row 1 is left-padded by 2 tokens, so the fixtures' padding-mask paths are on the training path.
        long[] mask = Enumerable.Range(0, Rows * Seq).Select(i => leftPadding && i >= Seq && i < Seq + 2 ? 0L : 1L).ToArray();
        return new TrainingBatch { InputIds = ids, BatchSize = Rows, SequenceLength = Seq, AttentionMask = mask };
    }

    [TestMethod]
    [DataRow("ortgenai-tiny-random-gpt2-fp32/past.onnx", 1000)]
    [DataRow("ortgenai-tiny-random-llama-fp32/model.onnx", 256)]
    [DataRow("ortgenai-tiny-random-llama-fp16/model.onnx", 256)]
    [DataRow("ortgenai-tiny-gqa/model.onnx", 256)]
    [DataRow("ortgenai-tiny-qwen35/decoder.onnx", 256)]
    public void Step_FixtureWithLoraOnAllLinear_LossDecreasesOver20Steps(string fixture, int vocab)
    {
        using var temp = new TempDir();
        TrainingArtifacts artifacts = BuildArtifacts(temp, fixture);
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1, LearningRate = 1e-2f });
        TrainingBatch batch = Batch(vocab, 5);
        var losses = new List<float>();
        for (int i = 0; i < 20; i++)
        {
            losses.Add(session.Step(batch).Loss);
        }

        Console.WriteLine($"FIXTURETRAIN | {fixture} | {artifacts.Trainable.Count} tensors | loss {losses[0]:F4} -> {losses[^1]:F4}");
        Assert.IsTrue(losses.All(float.IsFinite), "every loss is finite");
        // Independent of the gradient's correctness only in sign: a wrong gradient (or a zero one, as when a fused op
        // cut the path) does not lower the loss by 20 AdamW steps.
        Assert.IsLessThan(losses[0] - 1e-2f, losses[^1], $"loss {losses[0]} -> {losses[^1]}");
    }
}
