using Onnx.Lora;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
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

        // 30 · (13·576 + 6·1536 + 1.1·9·1024) + 3·49152 / 8 (the fused head's chunks) = 805,248 + 18,432 = 823,680
        // floats a token; · 4 B · 1024 tokens · 1.1.
        Assert.AreEqual((long)(1.1 * 4 * 1024 * 823680.0), e.Activations);
    }

    [TestMethod]
    public void Estimate_WithCheckpointing_KeepsLayerInputsTheLossAndOneLayerWithItsAttentionGradient()
    {
        TrainingMemoryEstimate e = TrainingMemoryEstimate.Estimate(Options(seq: 1024, batch: 1, checkpointing: true), s_smolLm, dataBytes: 0);

        // 30·576 (layer inputs) + 3·49152 / 8 (the loss's chunks) + 13·576 + 6·1536 + 1.1·9·1024 + 2·9·1024 (one layer
        // and its attention backward) = 17,280 + 18,432 + 26,841.6 + 18,432 = 80,985.6 floats a token.
        Assert.AreEqual((long)(1.1 * 4 * 1024 * 80985.6), e.Activations);
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

    [TestMethod]
    public void Estimate_TargetingTheHead_CountsWholeLogits()
    {
        TrainOptions options = Options(seq: 512, batch: 2, checkpointing: false);
        long frozenHead = TrainingMemoryEstimate.Estimate(options, s_smolLm, 0).Activations;
        long adaptedHead = TrainingMemoryEstimate.Estimate(options with { Lora = new LoraConfig { Targets = [LoraConfig.AllLinear, "lm_head"] } }, s_smolLm, 0).Activations;

        // The adapted head is not fused: its base product, LoRA product and sum, 3·V a token, against 3·V / 8.
        Assert.AreEqual(1.1 * 4 * 1024 * (3.0 - (3.0 / 8)) * 49152, adaptedHead - frozenHead, 2.0);
    }

    [TestMethod]
    public void Estimate_StoriesAt512By16_IsNotBelowTheMeasuredPeak()
    {
        // stories260K as train converts it (width 64, 5 layers, 8 heads, MLP 172, vocabulary 512), 1.04 MB of weights.
        var stories = new ModelShape(WeightBytes: 1_040_000, Hidden: 64, Intermediate: 172, Layers: 5, Heads: 8, Vocab: 512, LinearInOutSum: 5 * 1156);
        TrainingMemoryEstimate e = TrainingMemoryEstimate.Estimate(Options(seq: 512, batch: 16, checkpointing: false), stories, dataBytes: 0);

        // Measured: `train` on stories260K.bin (its KV-cache conversion), --packing, 512 × 16, 12 steps, peak RSS
        // 1,377,528 KiB (BENCHMARKS.md). Attention dominates here: 5 layers · 1.1 · 8 heads · 512 of the 32,040 floats a token.
        const long measuredPeak = 1_377_528L * 1024;
        Assert.IsTrue(e.Total >= measuredPeak * 0.95, $"estimate {e.Total} vs peak {measuredPeak}");
        Assert.IsTrue(e.Total <= measuredPeak * 1.3, $"estimate {e.Total} vs peak {measuredPeak}");
    }

    [TestMethod]
    public void ShapeOf_TorchExportWithItsConfig_TakesTheHeadsFromConfigJson()
    {
        // The torch export's attention is plain MatMul/Softmax: no op names its 8 heads, config.json beside it does.
        string path = Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx");
        using Model model = OnnxReader.Load(path);

        Assert.AreEqual(8, TrainingMemoryEstimate.HeadsFromConfig(path));
        Assert.AreEqual(8, TrainingMemoryEstimate.ShapeOf(model, TrainingMemoryEstimate.HeadsFromConfig(path)).Heads);
    }

    [TestMethod]
    public void ShapeOf_PlainAttentionWithoutConfig_ReadsTheHeadsOffTheQuerySplit()
    {
        // The llama2.c conversion reshapes q to [0, 0, 8, 8] and k/v to [0, 0, 4, 8]: 8 heads of 8 make the width 64.
        using Model model = Onnx.Lora.Models.Conversion.Llama2cConverter.Convert(Fixtures.Path("stories260K", "stories260K.bin"), kvCache: false);

        Assert.AreEqual(8, TrainingMemoryEstimate.ShapeOf(model).Heads);
    }

    [TestMethod]
    public void HeadsFromConfig_MissingOrUnreadableConfig_IsNull()
    {
        using var dir = new TempDir();
        Assert.IsNull(TrainingMemoryEstimate.HeadsFromConfig(dir.File("model.onnx")));
        File.WriteAllText(dir.File("config.json"), "{ not json");
        Assert.IsNull(TrainingMemoryEstimate.HeadsFromConfig(dir.File("model.onnx")));
        File.WriteAllText(dir.File("config.json"), "{\"n_head\": 12}");
        Assert.AreEqual(12, TrainingMemoryEstimate.HeadsFromConfig(dir.File("model.onnx")));
    }

    private static TrainOptions Options(int seq, int batch, bool checkpointing) =>
        new() { Model = "m.onnx", Data = "d.jsonl", Tokenizer = "t", SeqLength = seq, BatchSize = batch, GradientCheckpointing = checkpointing };
}
