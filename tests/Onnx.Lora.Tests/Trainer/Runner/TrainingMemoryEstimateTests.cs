using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>The per-token memory estimate (<see cref="TrainingMemoryEstimate.Estimate"/>) against its formula worked by hand.</summary>
[TestClass]
public sealed class TrainingMemoryEstimateTests
{
    // SmolLM-135M: width 576, 30 layers, 9 heads, MLP 1536, vocabulary 49,152.
    private static readonly ModelShape s_smolLm = new(WeightBytes: 538L << 20, Hidden: 576, Intermediate: 1536, Layers: 30, Heads: 9, Vocab: 49152, LinearInOutSum: 305280);

    [TestMethod]
    public void Estimate_WithoutCheckpointing_KeepsEveryLayersActivations()
    {
        TrainingMemoryEstimate e = TrainingMemoryEstimate.Estimate(Options(seq: 1024, batch: 1, checkpointing: false), s_smolLm, dataBytes: 0);

        // 30 · (17·576 + 7·1536 + 9·1024) + 2·49152 = 991,104 floats a token; · 4 B · 1024 tokens · 1.1.
        Assert.AreEqual((long)(1.1 * 4 * 1024 * 991104.0), e.Activations);
    }

    [TestMethod]
    public void Estimate_WithCheckpointing_KeepsLayerInputsTheLossAndOneLayerWithItsAttentionGradient()
    {
        TrainingMemoryEstimate e = TrainingMemoryEstimate.Estimate(Options(seq: 1024, batch: 1, checkpointing: true), s_smolLm, dataBytes: 0);

        // 30·576 (layer inputs) + 4·49152 (the loss) + 17·576 + 7·1536 + 3·9·1024 (one layer and its attention
        // backward) = 17,280 + 196,608 + 48,192 = 262,080 floats a token.
        Assert.AreEqual((long)(1.1 * 4 * 1024 * 262080.0), e.Activations);
        Assert.AreEqual(s_smolLm.WeightBytes, e.Weights, "checkpointing changes the activations only");
    }

    [TestMethod]
    public void Estimate_WithCheckpointing_GrowsByOneLayerInputPerLayer()
    {
        TrainOptions options = Options(seq: 512, batch: 2, checkpointing: true);
        long thirty = TrainingMemoryEstimate.Estimate(options, s_smolLm, 0).Activations;
        long sixty = TrainingMemoryEstimate.Estimate(options, s_smolLm with { Layers = 60 }, 0).Activations;

        // 30 more layers keep 30 · 576 more floats a token (1024 tokens, 4 B, 1.1), not 30 more layers' activations.
        Assert.AreEqual(1.1 * 4 * 1024 * 30 * 576, sixty - thirty, 2.0);
    }

    private static TrainOptions Options(int seq, int batch, bool checkpointing) =>
        new() { Model = "m.onnx", Data = "d.jsonl", Tokenizer = "t", SeqLength = seq, BatchSize = batch, GradientCheckpointing = checkpointing };
}
