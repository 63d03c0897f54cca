using System.Text.Json.Nodes;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>
/// PEFT's rules case by case, each expectation written from PEFT's documented behaviour (LoraConfig docs and
/// tuners_utils.check_target_module_exists / utils.other.get_pattern_key), not from our implementation.
/// </summary>
[TestClass]
public sealed class LoraConfigTests
{
    // A 4-layer Llama as Hugging Face names its linear modules.
    private static readonly string[] s_modules =
    [
        .. Enumerable.Range(0, 4).SelectMany(i => new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" }.Select(m => $"model.layers.{i}.{m}")),
        "lm_head",
    ];

    private static string[] Selected(LoraConfig config) => s_modules.Where(m => config.Selects(m, isOutputHead: m == "lm_head")).ToArray();

    [TestMethod]
    public void RankOf_KeyWithAlternation_MatchesOnlyWholeKeyAtTheEnd()
    {
        // PEFT: re.match(rf"(.*\.)?({key})$", name). Without the group, "^(.*\.)?layers\.2|down_proj$" would also take
        // every module of layer 2 (its first branch has no $).
        var config = new LoraConfig { Rank = 8, RankPattern = [new PatternOverride(@"layers\.2|down_proj", 4)] };
        Assert.AreEqual(8, config.RankOf("model.layers.2.self_attn.q_proj"));
        Assert.AreEqual(4, config.RankOf("model.layers.0.mlp.down_proj"));
        Assert.AreEqual(4, config.RankOf("model.layers.2.mlp.down_proj"));
        Assert.AreEqual(4, config.RankOf("model.layers.2"), "the first branch applies to a name ending in layers.2");
    }

    [TestMethod]
    public void RankOf_SeveralKeysMatch_FirstKeyInOrderWins()
    {
        var config = new LoraConfig { Rank = 8, RankPattern = [new PatternOverride("q_proj", 2), new PatternOverride(@"layers\.0\.self_attn\.q_proj", 16)] };
        Assert.AreEqual(2, config.RankOf("model.layers.0.self_attn.q_proj"));
    }

    [TestMethod]
    [DataRow("proj", 8)]
    [DataRow("_proj", 8)]
    [DataRow("q_proj", 2)]
    [DataRow(@"self_attn\.q_proj", 2)]
    [DataRow(@"model\.layers\.0\.self_attn\.q_proj", 2)]
    [DataRow(@"layers\.1\.self_attn\.q_proj", 8)]
    [DataRow("self_attn", 8)]
    public void RankOf_Key_MatchesWholeTrailingComponents(string key, int expected)
    {
        var config = new LoraConfig { Rank = 8, RankPattern = [new PatternOverride(key, 2)] };
        Assert.AreEqual(expected, config.RankOf("model.layers.0.self_attn.q_proj"));
    }

    [TestMethod]
    public void AlphaOf_AndScaling_UseTheUsersAlphaAndOneFormula()
    {
        var config = new LoraConfig { Rank = 16, Alpha = 16, UseRsLora = true, AlphaPattern = [new PatternOverride("v_proj", 32)] };
        Assert.AreEqual(4.0, config.ScalingOf("model.layers.0.self_attn.q_proj"), 0, "16/√16");
        Assert.AreEqual(8.0, config.ScalingOf("model.layers.0.self_attn.v_proj"), 0, "32/√16");
        Assert.AreEqual(2.0, LoraConfig.Scaling(8, 16, useRsLora: false), 0);
        Assert.AreEqual(0.0, LoraConfig.Scaling(0, 16, useRsLora: false), 0, "an empty r = 0 slot adds nothing");
    }

    [TestMethod]
    public void Selects_SuffixTargetsWithLayers_TakesOnlyThoseLayers()
    {
        string[] chosen = Selected(new LoraConfig { Targets = ["q_proj", "v_proj"], Layers = new HashSet<int> { 0, 2 } });
        CollectionAssert.AreEquivalent(
            new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj" },
            chosen);
    }

    [TestMethod]
    public void Selects_FullNameInTargets_IgnoresLayers()
    {
        // PEFT: "key in config.target_modules" returns before the layers_to_transform check.
        string[] chosen = Selected(new LoraConfig { Targets = ["q_proj", "model.layers.3.mlp.down_proj"], Layers = new HashSet<int> { 0 } });
        CollectionAssert.AreEquivalent(new[] { "model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj" }, chosen);
    }

    [TestMethod]
    public void Selects_ExcludeList_RemovesExactAndSuffixMatches()
    {
        string[] chosen = Selected(new LoraConfig { Exclude = ["mlp.down_proj", "model.layers.0.self_attn.q_proj", "proj"] });
        Assert.AreEqual((4 * 7) - 4 - 1, chosen.Length, "all-linear minus 4 down_proj and one q_proj; 'proj' is no component");
        Assert.IsFalse(chosen.Any(m => m.EndsWith("down_proj", StringComparison.Ordinal) || m == "model.layers.0.self_attn.q_proj" || m == "lm_head"));
    }

    [TestMethod]
    public void Selects_ExcludeRegex_IsAFullMatch()
    {
        Assert.AreEqual(14, Selected(new LoraConfig { ExcludeRegex = @".*\.layers\.[01]\..*" }).Length, "layers 2 and 3 stay");
        Assert.AreEqual(28, Selected(new LoraConfig { ExcludeRegex = @"layers\.0" }).Length, "no module's whole name is 'layers.0'");
    }

    [TestMethod]
    public void Selects_TargetRegex_IsAFullMatchWithoutLayerFilter()
    {
        Assert.AreEqual(0, Selected(new LoraConfig { TargetRegex = "q_proj" }).Length, "a string target must match the whole name");
        CollectionAssert.AreEquivalent(
            new[] { "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj" },
            Selected(new LoraConfig { TargetRegex = @".*\.1\.self_attn\.(q|v)_proj" }));
    }

    [TestMethod]
    public void Selects_AllLinear_SkipsOutputHeadUnlessNamed()
    {
        Assert.AreEqual(28, Selected(new LoraConfig()).Length);
        CollectionAssert.AreEqual(new[] { "lm_head" }, Selected(new LoraConfig { Targets = ["lm_head"] }));
    }

    [TestMethod]
    [DataRow("model.layers.12.mlp.up_proj", null, 12)]
    [DataRow("model.layers.1.mlp.experts.3.up_proj", null, 3)]
    [DataRow("model.layers.1.mlp.experts.3.up_proj", "layers", 1)]
    [DataRow("transformer.h.5.attn.c_attn", "h", 5)]
    [DataRow("transformer.h.5.attn.c_attn", "layers", null)]
    [DataRow("layers.0.q_proj", null, null)]
    [DataRow("lm_head", null, null)]
    public void LayerIndexOf_FollowsPeftsRegex(string module, string? pattern, int? expected)
    {
        // PEFT: re.match(r".*\.[^.]*\.(\d+)\.", key) (greedy: the last NAME.N.), or rf".*\.{pattern}\.(\d+)\.".
        Assert.AreEqual(expected, LoraConfig.LayerIndexOf(module, pattern is null ? null : [pattern]));
    }

    [TestMethod]
    public void Selects_LayersPattern_CountsInTheNamedList()
    {
        var config = new LoraConfig { Targets = ["up_proj"], Layers = new HashSet<int> { 1 }, LayersPattern = ["layers"] };
        Assert.IsTrue(config.Selects("model.layers.1.mlp.experts.3.up_proj"));
        Assert.IsFalse((config with { LayersPattern = null }).Selects("model.layers.1.mlp.experts.3.up_proj"), "without a pattern the expert index 3 is the layer");
    }

    [TestMethod]
    public void Validate_LayersWithRegexOrPatternWithoutLayers_Throws()
    {
        Assert.ThrowsExactly<LoraOptionsException>(() => new LoraConfig { Targets = [], TargetRegex = ".*q_proj", Layers = new HashSet<int> { 0 } }.Validate());
        Assert.ThrowsExactly<LoraOptionsException>(() => new LoraConfig { LayersPattern = ["layers"] }.Validate());
        new LoraConfig { Targets = ["q_proj"], Layers = new HashSet<int> { 0 }, LayersPattern = ["layers"] }.Validate();
    }

    [TestMethod]
    [DataRow("true", LoraInit.KaimingUniform)]
    [DataRow("gaussian", LoraInit.Gaussian)]
    [DataRow("pissa", LoraInit.Pissa)]
    [DataRow("pissa_niter_4", LoraInit.Pissa)]
    [DataRow("Gaussian", LoraInit.Gaussian)]
    public void ParseInit_PeftNames_AreRead(string name, LoraInit expected) => Assert.AreEqual(expected, LoraConfig.ParseInit(name));

    [TestMethod]
    public void ParseInit_UnknownName_Throws() => Assert.ThrowsExactly<LoraOptionsException>(() => LoraConfig.ParseInit("olora"));

    [TestMethod]
    public void ToPeft_ThenFromPeft_SelectsAndScalesEveryModuleAlike()
    {
        var config = new LoraConfig
        {
            Rank = 4,
            Alpha = 12,
            UseRsLora = true,
            Init = LoraInit.Gaussian,
            Targets = ["q_proj", "v_proj", "down_proj"],
            Exclude = ["model.layers.1.self_attn.v_proj"],
            Layers = new HashSet<int> { 1, 3 },
            LayersPattern = ["layers"],
            RankPattern = [new PatternOverride(@"layers\.3\.self_attn\.q_proj|down_proj", 2)],
            AlphaPattern = [new PatternOverride("v_proj", 3)],
            BaseModelNameOrPath = "HuggingFaceTB/SmolLM-135M",
        };
        JsonObject json = LoraConfigJson.ToPeft(config);
        Assert.AreEqual("[1,3]", json["layers_to_transform"]!.ToJsonString());
        Assert.AreEqual("\"layers\"", json["layers_pattern"]!.ToJsonString());
        Assert.AreEqual("[\"model.layers.1.self_attn.v_proj\"]", json["exclude_modules"]!.ToJsonString());
        Assert.AreEqual("gaussian", json["init_lora_weights"]!.GetValue<string>());
        Assert.IsTrue(json["use_rslora"]!.GetValue<bool>());
        Assert.AreEqual(12.0, json["lora_alpha"]!.GetValue<double>());

        LoraConfig back = LoraConfigJson.FromPeft(JsonNode.Parse(json.ToJsonString())!.AsObject());
        foreach (string m in s_modules)
        {
            Assert.AreEqual(config.Selects(m), back.Selects(m), m);
            Assert.AreEqual(config.ScalingOf(m), back.ScalingOf(m), 0, m);
        }

        Assert.AreEqual(config.BaseModelNameOrPath, back.BaseModelNameOrPath);
        Assert.AreEqual(5, Selected(back).Length, "layers 1 and 3: q, down (1); q, v, down (3)");
    }

    [TestMethod]
    public void ToPeft_AllLinearWithAdaptedModules_WritesLeafNamesAsPeftSavesThem()
    {
        JsonObject json = LoraConfigJson.ToPeft(new LoraConfig(), ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj", "model.layers.0.self_attn.q_proj"]);
        Assert.AreEqual("[\"q_proj\",\"up_proj\"]", json["target_modules"]!.ToJsonString());
    }

    [TestMethod]
    public void FromPeft_TargetModulesString_IsARegexUnlessAllLinear()
    {
        Assert.AreEqual(".*q_proj", LoraConfigJson.FromPeft(new JsonObject { ["target_modules"] = ".*q_proj" }).TargetRegex);
        Assert.IsTrue(LoraConfigJson.FromPeft(new JsonObject { ["target_modules"] = "all-linear" }).IsAllLinear);
        Assert.AreEqual("x", LoraConfigJson.FromPeft(new JsonObject { ["exclude_modules"] = "x" }).ExcludeRegex);
        CollectionAssert.AreEqual(new[] { 2 }, LoraConfigJson.FromPeft(new JsonObject { ["layers_to_transform"] = 2 }).Layers!.ToArray());
    }

    [TestMethod]
    public void FromPeft_WrongFieldType_NamesTheField()
    {
        var e = Assert.ThrowsExactly<LoraOptionsException>(() => LoraConfigJson.FromPeft(new JsonObject { ["layers_to_transform"] = "0-3" }));
        StringAssert.Contains(e.Message, "layers_to_transform");
    }
}
