using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>
/// train holds inject's LoraConfig itself: the lora_* keys edit it, "did the user set LoRA options" is its presence
/// (not a comparison with defaults), and the resume fingerprint of a run is what it was when the keys were fields.
/// </summary>
[TestClass]
public sealed class TrainLoraConfigTests
{
    private static readonly KeyValuePair<string, string>[] s_required =
    [
        new("model", "m.onnx"), new("data", "d.jsonl"), new("tokenizer", "tok.model"),
    ];

    private static string Peft(LoraConfig config) => LoraConfigJson.ToPeft(config).ToJsonString();

    [TestMethod]
    public void Load_NoLoraKey_LeavesLoraUnsetAndUsesInjectDefaults()
    {
        TrainOptions o = TrainOptionsLoader.Load(null, s_required);
        Assert.IsNull(o.Lora);
        Assert.AreEqual(Peft(new LoraConfig()), Peft(o.LoraOrDefault));
    }

    [TestMethod]
    public void Load_LoraKeySetToItsDefault_IsPresentAsSet()
    {
        // The old check compared with defaults, so `lora_rank: 8` (the default) read as "not set".
        TrainOptions o = TrainOptionsLoader.Load(null, [.. s_required, new("lora-rank", "8")]);
        Assert.IsNotNull(o.Lora);
        Assert.AreEqual(Peft(new LoraConfig()), Peft(o.Lora));
    }

    [TestMethod]
    public void Load_EveryLoraKey_EditsOneLoraConfig()
    {
        TrainOptions o = TrainOptionsLoader.Load(null,
        [
            .. s_required, new("lora-rank", "16"), new("lora-alpha", "32"), new("lora-dropout", "0.05"), new("use-rslora", "true"), new("use-dora", "true"),
            new("lora-targets", "q_proj,v_proj"), new("lora-exclude", "o_proj"), new("lora-layers", "0-1,3"),
            new("lora-rank-pattern", "v_proj=4"), new("lora-alpha-pattern", "v_proj=8"), new("lora-init", "gaussian"),
        ]);
        LoraConfig l = o.Lora!;
        Assert.AreEqual(16, l.Rank);
        Assert.AreEqual(32.0, l.Alpha);
        Assert.AreEqual(0.05, l.Dropout);
        Assert.IsTrue(l.UseRsLora && l.UseDora);
        CollectionAssert.AreEqual(new[] { "q_proj", "v_proj" }, l.Targets.ToArray());
        CollectionAssert.AreEqual(new[] { "o_proj" }, l.Exclude.ToArray());
        CollectionAssert.AreEqual(new[] { 0, 1, 3 }, l.Layers!.Order().ToArray());
        Assert.AreEqual(4, l.RankOf("model.layers.0.self_attn.v_proj"));
        Assert.AreEqual(4.0, l.ScalingOf("model.layers.0.self_attn.v_proj"), 1e-12, "rsLoRA: alpha_pattern 8 / √(rank_pattern 4)");
        Assert.AreEqual(LoraInit.Gaussian, l.Init);
    }

    [TestMethod]
    public void Load_MalformedPattern_NamesTheFlagAndTheValue()
    {
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(null, [.. s_required, new("lora-rank-pattern", "q_proj")]));
        StringAssert.Contains(e.Message, "--lora-rank-pattern");
        StringAssert.Contains(e.Message, "'q_proj'");
    }

    [TestMethod]
    public void ToLoraOptions_WithoutLoraKeys_IsInjectsDefaultsWithTheRunsSeedAndBaseModel()
    {
        LoraOptions lora = ModelPreparation.ToLoraOptions(new TrainOptions { Model = "base.onnx", Seed = 5 });
        Assert.AreEqual(new LoraConfig().Rank, lora.Rank);
        Assert.AreEqual(5, lora.Seed);
        Assert.IsFalse(lora.TrainingGraph, "no dropout, no training-graph dropout node");
        Assert.AreEqual(LoraPlacement.Initializers, lora.Placement);
    }

    [TestMethod]
    public void ResumeFingerprint_AsWhenLoraKeysWereFields()
    {
        // The text the fingerprint hashed before train held a LoraConfig (fields LoraRank, LoraAlpha, ... in this
        // order, layers and patterns as written): a run started before resumes after.
        var o = new TrainOptions
        {
            Model = "dir/base.onnx", Data = "d.jsonl", Tokenizer = "tok.model", Seed = 3,
            Lora = new LoraConfig { Rank = 16, Alpha = 32, Targets = ["q_proj", "v_proj"], Layers = new SortedSet<int> { 0, 1, 3 }, RankPattern = [new PatternOverride("v_proj", 4)] },
        };
        string old = string.Join("|",
            "base.onnx", "d.jsonl", "tok.model", o.SeqLength, o.BatchSize, o.GradientAccumulationSteps, o.Seed, o.Packing, o.CompletionOnlyLoss, o.Truncate,
            16, 32.0, "q_proj,v_proj", 0.0, false, false, null, "", "0-1,3", "v_proj=4", "", LoraInit.KaimingUniform,
            o.Schedule, o.LearningRate.ToString("R", CultureInfo.InvariantCulture), o.LoraPlusRatio.ToString("R", CultureInfo.InvariantCulture));
        Assert.AreEqual(Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(old)))[..16], o.ResumeFingerprint());

        string defaults = string.Join("|",
            "base.onnx", "d.jsonl", "tok.model", o.SeqLength, o.BatchSize, o.GradientAccumulationSteps, o.Seed, o.Packing, o.CompletionOnlyLoss, o.Truncate,
            8, 8.0, "all-linear", 0.0, false, false, null, "", null, "", "", LoraInit.KaimingUniform,
            o.Schedule, o.LearningRate.ToString("R", CultureInfo.InvariantCulture), o.LoraPlusRatio.ToString("R", CultureInfo.InvariantCulture));
        Assert.AreEqual(Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(defaults)))[..16], (o with { Lora = null }).ResumeFingerprint());
    }
}
