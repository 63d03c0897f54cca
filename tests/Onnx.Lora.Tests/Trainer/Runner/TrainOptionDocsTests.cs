using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>train's keys: one documentation table, the generated docs/config.md, help with defaults, inject's LoRA defaults.</summary>
[TestClass]
public sealed class TrainOptionDocsTests
{
    [TestMethod]
    public void All_Keys_EqualTheLoaderKeys()
    {
        CollectionAssert.AreEquivalent(TrainOptionsLoader.Keys.ToArray(), TrainOptionDocs.All.Select(d => d.Key).ToArray());
    }

    [TestMethod]
    public void ConfigPage_InRepository_EqualsTheGeneratedPage()
    {
        string page = File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "docs", "config.md")).ReplaceLineEndings("\n");
        Assert.AreEqual(TrainOptionDocs.Markdown(), page,
            "docs/config.md is stale: regenerate it with `./tools/onnx-lora train --print-config-doc > docs/config.md`.");
    }

    [TestMethod]
    public void Markdown_EveryKey_HasItsDefaultFromTheCode()
    {
        string page = TrainOptionDocs.Markdown();
        var defaults = new TrainOptions();
        StringAssert.Contains(page, $"| `learning_rate` | `--learning-rate` | number | `{NumberText.Plain(defaults.LearningRate)}` |");
        StringAssert.Contains(page, $"| `lora_alpha` | `--lora-alpha` | number | `{NumberText.Plain(new LoraOptions().Alpha)}` |");
        foreach (TrainOptionDoc d in TrainOptionDocs.All)
        {
            StringAssert.Contains(page, $"| `{d.Key}` | `{d.Flag}` |");
        }
    }

    [TestMethod]
    public void TrainHelp_EveryOption_HasADescriptionAndDefaultAndSwitchesTakeNoValue()
    {
        (int code, string output, _) = CliRunner.Run("train", "--help");
        Assert.AreEqual(0, code);
        Assert.IsFalse(output.Contains("Training option '", StringComparison.Ordinal), output);
        foreach (TrainOptionDoc d in TrainOptionDocs.All)
        {
            string line = output.Split('\n').Single(l => l.TrimStart().StartsWith(d.Flag + " ", StringComparison.Ordinal));
            if (d.Kind == OptionValueKind.Switch)
            {
                Assert.IsFalse(line.Contains('<', StringComparison.Ordinal), $"switch shown with a value: {line}");
            }

            if (d.Default.Length > 0)
            {
                StringAssert.Contains(line, $"[default: {d.Default}]");
            }
        }
    }

    [TestMethod]
    public void Defaults_Lora_EqualInjectDefaults()
    {
        LoraOptions train = ModelPreparation.ToLoraOptions(new TrainOptions());
        var inject = new LoraOptions();
        Assert.AreEqual(inject.Rank, train.Rank);
        Assert.AreEqual(inject.Alpha, train.Alpha);
        CollectionAssert.AreEqual(inject.Targets.ToArray(), train.Targets.ToArray());
        Assert.AreEqual(inject.Init, train.Init);
        Assert.AreEqual(inject.UseRsLora, train.UseRsLora);
        Assert.IsNull(train.Layers);
        Assert.IsEmpty(train.Exclude);
    }

    [TestMethod]
    public void Defaults_OnFusedQkvFixture_SelectQkvProj()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("ortgenai-tiny-random-llama-fp32", "model.onnx"));
        IReadOnlyList<SelectedTarget> plan = LoraInjector.Plan(model, ModelPreparation.ToLoraOptions(new TrainOptions()));
        Assert.IsTrue(plan.Any(p => p.Target.Module.EndsWith("qkv_proj", StringComparison.Ordinal)), string.Join(",", plan.Select(p => p.Target.Module)));
    }

    [TestMethod]
    public void Load_InjectLoraFlags_MapOntoTheRewriterOptions()
    {
        TrainOptions o = TrainOptionsLoader.Load(null,
        [
            new("model", "m.onnx"), new("data", "d.jsonl"), new("tokenizer", "t.model"),
            new("lora-layers", "0-1,3"), new("lora-exclude", "o_proj"), new("lora-rank-pattern", "q_proj=4"),
            new("lora-alpha-pattern", "v_proj=32"), new("lora-init", "gaussian"), new("lora-targets", "q_proj,v_proj"),
        ]);
        LoraOptions lora = ModelPreparation.ToLoraOptions(o);
        CollectionAssert.AreEqual(new[] { 0, 1, 3 }, lora.Layers!.ToArray());
        CollectionAssert.AreEqual(new[] { "o_proj" }, lora.Exclude.ToArray());
        Assert.AreEqual(new PatternOverride("q_proj", 4), lora.RankPattern.Single());
        Assert.AreEqual(new PatternOverride("v_proj", 32), lora.AlphaPattern.Single());
        Assert.AreEqual(LoraInit.Gaussian, lora.Init);
        CollectionAssert.AreEqual(new[] { "q_proj", "v_proj" }, lora.Targets.ToArray());
        Assert.IsNull(lora.TargetRegex);

        // A regex target goes without layers (PEFT refuses layers_to_transform with a string target_modules).
        TrainOptions r = TrainOptionsLoader.Load(null,
            [new("model", "m.onnx"), new("data", "d.jsonl"), new("tokenizer", "t.model"), new("lora-target-regex", @".*\.(q|v)_proj")]);
        LoraOptions regex = ModelPreparation.ToLoraOptions(r);
        Assert.AreEqual(@".*\.(q|v)_proj", regex.TargetRegex);
        Assert.IsEmpty(regex.Targets);
    }

    [TestMethod]
    public void Load_BadLayerList_IsAConfigErrorNamingLora()
    {
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(null,
            [new("model", "m.onnx"), new("data", "d.jsonl"), new("tokenizer", "t.model"), new("lora-layers", "3-1")]));
        StringAssert.Contains(e.Message, "3-1");
    }

    [TestMethod]
    public void Plain_SmallLearningRates_ArePlainDecimals()
    {
        Assert.AreEqual("0.0000552", NumberText.Plain(5.52e-5, 3));
        Assert.AreEqual("0.002", NumberText.Plain(2e-3, 3));
        Assert.AreEqual("16", NumberText.Plain(16));
        Assert.AreEqual("0", NumberText.Plain(0));
    }
}
