using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>Target discovery and injection on every model in ../shared/fixtures (made by other tools).</summary>
[TestClass]
public sealed class FixtureTargetsTests
{
    public static IEnumerable<object[]> FixtureModels => Fixtures.AllModels();

    /// <summary>
    /// The projections each fixture must expose, from the fixture README and the graphs' own KV-cache inputs
    /// (one past_key_values.N / past_N per attention layer): module name patterns with {0} for the layer.
    /// </summary>
    private static (int Layers, string[] Modules) Expected(string relativePath, Model model)
    {
        int kvLayers = model.Graph.Inputs.Count(i => i.Name.EndsWith(".key", StringComparison.Ordinal) || System.Text.RegularExpressions.Regex.IsMatch(i.Name, @"^past_\d+$"));
        string[] llamaTorch = ["model.layers.{0}.self_attn.q_proj", "model.layers.{0}.self_attn.k_proj", "model.layers.{0}.self_attn.v_proj", "model.layers.{0}.self_attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"];
        return relativePath switch
        {
            _ when relativePath.StartsWith("stories260K", StringComparison.Ordinal) => (5, llamaTorch), // n_layers 5 (README)
            _ when relativePath.Contains("llama-fp16", StringComparison.Ordinal) => (kvLayers, ["model.layers.{0}.attn.q_proj", "model.layers.{0}.attn.k_proj", "model.layers.{0}.attn.v_proj", "model.layers.{0}.attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"]),
            _ when relativePath.Contains("llama-fp32", StringComparison.Ordinal) => (kvLayers, ["model.layers.{0}.attn.qkv_proj", "model.layers.{0}.attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"]),
            _ when relativePath.Contains("tiny-gqa", StringComparison.Ordinal) => (kvLayers, ["model.layers.{0}.attn.q_proj", "model.layers.{0}.attn.k_proj", "model.layers.{0}.attn.v_proj", "model.layers.{0}.attn.o_proj"]),
            _ when relativePath.Contains("qwen35", StringComparison.Ordinal) && kvLayers > 0 => (kvLayers, ["model.layers.{0}.self_attn.q_proj", "model.layers.{0}.self_attn.k_proj", "model.layers.{0}.self_attn.v_proj", "model.layers.{0}.self_attn.o_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"]),
            _ when relativePath.Contains("gpt2", StringComparison.Ordinal) => (kvLayers, ["transformer.h.{0}.attn.c_attn", "transformer.h.{0}.attn.c_proj", "transformer.h.{0}.mlp.c_fc", "transformer.h.{0}.mlp.c_proj"]),

            // The LFM2 test decoder has no projections in its graph (embedding → lm_head); embedding/vision have no MatMul.
            _ => (0, []),
        };
    }

    [TestMethod]
    [DynamicData(nameof(FixtureModels))]
    public void Find_FixtureModel_ListsEveryLayersProjectionsAndMarksTheHead(string relativePath)
    {
        using Model model = OnnxReader.Load(Fixtures.Path(relativePath));
        IReadOnlyList<LinearTarget> targets = TargetDiscovery.Find(model);
        (int layers, string[] modules) = Expected(relativePath, model);
        var expected = Enumerable.Range(0, layers).SelectMany(l => modules.Select(m => string.Format(System.Globalization.CultureInfo.InvariantCulture, m, l))).ToHashSet();
        var found = targets.Where(t => !t.IsOutputHead).Select(t => t.Module).ToHashSet();
        CollectionAssert.AreEquivalent(expected.Order().ToArray(), found.Order().ToArray(), $"modules of {relativePath}: {string.Join(", ", found)}");
        foreach (LinearTarget t in targets.Where(t => !t.IsOutputHead))
        {
            Assert.AreEqual(ModuleNamingTests.LayerOf(t.Module), t.LayerIndex, t.Module);
        }

        // Every decoder with logits has exactly one output head, and it is lm_head.
        if (model.Graph.Outputs.Any(o => o.Name == "logits"))
        {
            Assert.AreEqual("lm_head", targets.Single(t => t.IsOutputHead).Module);
        }
    }

    [TestMethod]
    [DynamicData(nameof(FixtureModels))]
    public void Inject_FixtureModel_ZeroBKeepsOutputsAndRandomAdaptersEqualMergedWeights(string relativePath)
    {
        using Model probe = OnnxReader.Load(Fixtures.Path(relativePath));
        var options = new LoraOptions { Rank = 2, Alpha = 4, TargetRegex = ".*" };
        if (TargetDiscovery.Find(probe).Count == 0)
        {
            var e = Assert.ThrowsExactly<LoraOptionsException>(() => LoraInjector.Inject(probe, options));
            StringAssert.Contains(e.Message, "no linear layer");
            return;
        }

        using var dir = new TempDir();
        string basePath = Fixtures.Path(relativePath);
        Dictionary<string, float[]> baseOut = OrtRunner.Run(basePath);
        using Model lora = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(lora, options);
        float zero = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora0.onnx")), baseOut);
        Assert.IsTrue(zero <= Tolerances.ZeroAdapterAbs, $"B=0 changed outputs by {zero}");

        var adapters = LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 21, scale: 0.05f);
        Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx"));
        using Model reference = OnnxReader.Load(basePath);
        LoraTestSupport.MergeIntoBase(reference, manifest, adapters);
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "merged.onnx"));

        bool fp16 = manifest.Modules.Any(m => reference.Graph.Initializers[m.BaseWeight].Initializer!.DataType == DataType.Float16);
        float tolerance = fp16 ? Tolerances.MergedRelFp16 : Tolerances.MergedRelFp32;
        float rel = LoraTestSupport.RelativeError(loraOut, refOut);
        float changed = LoraTestSupport.RelativeError(loraOut, baseOut);
        Console.WriteLine($"{relativePath}: {manifest.Modules.Count} modules; B=0 max abs diff {zero:E2}; rel error {rel:E2} (tolerance {tolerance:E0}); rel change {changed:E2}");
        Assert.IsTrue(rel <= tolerance, $"relative error {rel} > {tolerance}");
        Assert.IsTrue(changed > 10 * tolerance, $"random adapters barely changed the outputs ({changed}); the comparison would be vacuous");
    }

    [TestMethod]
    public void Inject_TorchLlamaAllLinear_PicksExactlySevenProjectionsPerLayer()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        IReadOnlyList<SelectedTarget> plan = LoraInjector.Plan(model, new LoraOptions());
        Assert.AreEqual(5 * 7, plan.Count);
        foreach (string proj in new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" })
        {
            CollectionAssert.AreEquivalent(new[] { 0, 1, 2, 3, 4 }, plan.Where(p => p.Target.Module.EndsWith("." + proj, StringComparison.Ordinal)).Select(p => p.Target.LayerIndex!.Value).ToArray(), proj);
        }

        Assert.IsFalse(plan.Any(p => p.Target.Module == "lm_head"));
    }

    [TestMethod]
    public void Inject_ExternalDataModel_ReadsNoWeightBytes()
    {
        // Plain LoRA needs names and shapes only: every initializer is swapped for a tensor that fails when read.
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "external", "model.onnx"));
        Assert.IsTrue(model.Graph.Initializers.Values.Any(v => v.Initializer!.IsExternal));
        foreach (Value init in model.Graph.Initializers.Values.ToArray())
        {
            model.Graph.Initializers.SetData(init.Name, new UnreadableTensor(init.Initializer!));
        }

        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4 });
        Assert.AreEqual(35, manifest.Modules.Count);
    }

    /// <summary>A tensor with the shape of another whose bytes must not be read.</summary>
    private sealed class UnreadableTensor(Onnx.Lora.Ir.Tensor original) : Onnx.Lora.Ir.Tensor(original.Name, original.DataType, original.Dims)
    {
        public override long ByteLength => original.ByteLength;

        public override ReadOnlyMemory<byte> GetBytes() => throw new AssertFailedException($"weight bytes of '{Name}' were read");
    }
}
