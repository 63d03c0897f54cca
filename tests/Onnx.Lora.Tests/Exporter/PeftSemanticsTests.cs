using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// A PEFT folder we export says what we adapted in PEFT's own terms: read back by PEFT's rules it selects exactly the
/// adapted modules (layers, exclusions, patterns with '|'), with the user's r / lora_alpha / use_rslora, and our importer
/// reads the same numbers back. The expected module lists are written by hand from PEFT's documented rules.
/// </summary>
[TestClass]
public sealed class PeftSemanticsTests
{
    private const string BaseModel = "karpathy/stories260K";

    private static readonly LoraOptions s_options = new()
    {
        Rank = 2,
        Alpha = 6,
        UseRsLora = true,
        Targets = ["q_proj", "v_proj", "down_proj"],
        Layers = new HashSet<int> { 0, 1, 3 },
        Exclude = ["model.layers.1.self_attn.v_proj"],
        RankPattern = [new PatternOverride(@"layers\.3\.self_attn\.q_proj|down_proj", 4)],
        BaseModelNameOrPath = BaseModel,
    };

    // PEFT on this config: suffix targets in layers 0, 1, 3; layer 1's v_proj excluded; rank 4 for layer 3's q_proj and
    // every down_proj (the key is one group: "layers.3" alone would not end a module name).
    private static readonly Dictionary<string, int> s_expected = new()
    {
        ["model.layers.0.self_attn.q_proj"] = 2,
        ["model.layers.0.self_attn.v_proj"] = 2,
        ["model.layers.0.mlp.down_proj"] = 4,
        ["model.layers.1.self_attn.q_proj"] = 2,
        ["model.layers.1.mlp.down_proj"] = 4,
        ["model.layers.3.self_attn.q_proj"] = 4,
        ["model.layers.3.self_attn.v_proj"] = 2,
        ["model.layers.3.mlp.down_proj"] = 4,
    };

    private static (LoraManifest Manifest, LoraWeights Weights, string[] Candidates) Trained()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        string[] candidates = TargetDiscovery.Find(model).Select(t => t.Module).ToArray();
        LoraManifest manifest = LoraInjector.Inject(model, s_options);
        var rng = new Random(20261203);
        LoraWeights initial = LoraWeights.FromModel(model, manifest, "stories260K");
        var trained = new LoraWeights(initial.Modules.Select(m => m with { B = LoraTestModels.Rand(m.B.Length, rng, 0.5f) }));
        return (manifest, trained, candidates);
    }

    [TestMethod]
    public void Inject_LayersExcludeAndAlternation_AdaptsWhatPeftAdapts()
    {
        (LoraManifest manifest, _, _) = Trained();
        CollectionAssert.AreEquivalent(s_expected.ToList(), manifest.Modules.Select(m => KeyValuePair.Create(m.Module, m.Rank)).ToList());
    }

    [TestMethod]
    public void Export_LayersExcludeAndAlternation_ConfigSelectsExactlyTheAdaptedModules()
    {
        using var dir = new TempDir();
        (LoraManifest manifest, LoraWeights weights, string[] candidates) = Trained();
        PeftAdapter.Export(weights, dir.Path, manifest.ConfigOrDerived());

        JsonObject json = JsonNode.Parse(File.ReadAllText(dir.File(PeftAdapter.ConfigFile)))!.AsObject();
        Assert.AreEqual("[0,1,3]", json["layers_to_transform"]!.ToJsonString());
        Assert.AreEqual("[\"model.layers.1.self_attn.v_proj\"]", json["exclude_modules"]!.ToJsonString());
        Assert.AreEqual("[\"q_proj\",\"v_proj\",\"down_proj\"]", json["target_modules"]!.ToJsonString());
        Assert.AreEqual(2, json["r"]!.GetValue<int>());
        Assert.AreEqual(6.0, json["lora_alpha"]!.GetValue<double>(), "the user's alpha, not alpha pre-multiplied for rsLoRA");
        Assert.IsTrue(json["use_rslora"]!.GetValue<bool>());
        Assert.AreEqual(4, json["rank_pattern"]![@"layers\.3\.self_attn\.q_proj|down_proj"]!.GetValue<int>());
        Assert.AreEqual(BaseModel, json["base_model_name_or_path"]!.GetValue<string>());

        // Read back by PEFT's rules over every linear module of the base: exactly the adapted ones, with their ranks.
        PeftConfig read = PeftAdapter.ReadConfig(dir.Path);
        CollectionAssert.AreEquivalent(s_expected.Keys.ToList(), candidates.Where(read.Selects).ToList());
        foreach ((string module, int rank) in s_expected)
        {
            Assert.AreEqual(rank, read.RankOf(module), module);
        }
    }

    [TestMethod]
    public void ExportThenImport_RsLora_GivesTheTrainedDeltaBack()
    {
        using var dir = new TempDir();
        (LoraManifest manifest, LoraWeights weights, _) = Trained();
        PeftAdapter.Export(weights, dir.Path, manifest.ConfigOrDerived());
        LoraWeights back = PeftAdapter.Import(dir.Path, manifest.Modules);
        foreach (LoraModuleWeights m in weights.Modules)
        {
            LoraModuleWeights r = back.Find(m.Module)!;
            CollectionAssert.AreEqual(m.A, r.A, m.Module);
            CollectionAssert.AreEqual(m.B, r.B, m.Module + ": B is stored unscaled at the config's own scale");
            Assert.AreEqual((float)(6 / Math.Sqrt(m.Rank)), r.Scale, 0f, m.Module + ": alpha/√r");
        }
    }

    [TestMethod]
    public void Export_WeightsWithoutConfig_NamesModulesInFullWithScaleOne()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(rank: 2, alpha: 5);
        PeftAdapter.Export(weights, dir.Path);

        PeftConfig read = PeftAdapter.ReadConfig(dir.Path);
        Assert.AreEqual(2.0, read.Lora.Alpha, "lora_alpha = r: PEFT's scale is 1");
        Assert.IsFalse(read.Lora.UseRsLora);
        CollectionAssert.AreEquivalent(weights.Modules.Select(m => m.Module).ToList(), read.Lora.Targets.ToList());
        LoraWeights back = PeftAdapter.Import(dir.Path);
        foreach (LoraModuleWeights m in weights.Modules)
        {
            float[] expected = m.ScaledB(), actual = back.Find(m.Module)!.ScaledB();
            CollectionAssert.AreEqual(expected, actual, m.Module + ": B carries the scale, folded exactly as an .onnx_adapter folds it");
        }
    }

    [TestMethod]
    public void Import_ModuleItsConfigDoesNotSelect_ThrowsNamingIt()
    {
        using var dir = new TempDir();
        (LoraManifest manifest, LoraWeights weights, _) = Trained();
        PeftAdapter.Export(weights, dir.Path, manifest.ConfigOrDerived());
        JsonObject json = JsonNode.Parse(File.ReadAllText(dir.File(PeftAdapter.ConfigFile)))!.AsObject();
        json["layers_to_transform"] = new JsonArray(0, 3);
        File.WriteAllText(dir.File(PeftAdapter.ConfigFile), json.ToJsonString());

        var e = Assert.ThrowsExactly<AdapterFormatException>(() => PeftAdapter.Import(dir.Path, manifest.Modules));
        StringAssert.Contains(e.Message, "model.layers.1.");
        StringAssert.Contains(e.Message, "layers_to_transform");
    }

    [TestMethod]
    public void ReadConfig_RankPatternWithAlternation_AppliesAsPeftDoes()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File(PeftAdapter.ConfigFile), """{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "down_proj"], "rank_pattern": {"layers\\.2|down_proj": 4}}""");
        PeftConfig config = PeftAdapter.ReadConfig(dir.Path);
        Assert.AreEqual(2, config.RankOf("model.layers.2.self_attn.q_proj"), "'layers.2' does not end the name");
        Assert.AreEqual(4, config.RankOf("model.layers.0.mlp.down_proj"));
    }
}
