using Onnx.Lora.Ir;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>Discovery and injection on every shape the models/ builders emit (2 layers each).</summary>
[TestClass]
public sealed class BuilderModelsTests
{
    private static readonly Dictionary<string, Func<Model>> s_models = new()
    {
        ["torch-anonymous"] = () => TorchLlamaBuilder.Build(new LlamaConfig()),
        ["torch-named-untied"] = () => TorchLlamaBuilder.Build(new LlamaConfig { Naming = InitializerNaming.Named, TiedEmbeddings = false }),
        ["gpt2-matmul"] = () => Gpt2Builder.Build(new Gpt2Config()),
        ["gpt2-gemm"] = () => Gpt2Builder.Build(new Gpt2Config { Linear = LinearStyle.Gemm }),
        ["bert"] = () => BertBuilder.Build(new BertConfig { TypeVocab = 200 }), // OrtRunner draws every *ids input from [0, 200)
        ["genai"] = () => GenAiLlamaBuilder.Build(new GenAiLlamaConfig()),
        ["genai-fused-fp16"] = () => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { FusedQkv = true, Precision = DataType.Float16 }),
        ["genai-int4"] = () => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Int4 = true }),
    };

    // Module names as the Hugging Face module trees name them (PEFT's keys), per layer.
    private static readonly Dictionary<string, string[]> s_expected = new()
    {
        ["torch"] = ["model.layers.{0}.self_attn.q_proj", "model.layers.{0}.self_attn.k_proj", "model.layers.{0}.self_attn.v_proj", "model.layers.{0}.self_attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"],
        ["gpt2"] = ["transformer.h.{0}.attn.c_attn", "transformer.h.{0}.attn.c_proj", "transformer.h.{0}.mlp.c_fc", "transformer.h.{0}.mlp.c_proj"],
        ["bert"] = ["bert.encoder.layer.{0}.attention.self.query", "bert.encoder.layer.{0}.attention.self.key", "bert.encoder.layer.{0}.attention.self.value", "bert.encoder.layer.{0}.attention.output.dense", "bert.encoder.layer.{0}.intermediate.dense", "bert.encoder.layer.{0}.output.dense"],
        ["genai"] = ["model.layers.{0}.attn.q_proj", "model.layers.{0}.attn.k_proj", "model.layers.{0}.attn.v_proj", "model.layers.{0}.attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"],
        ["genai-fused"] = ["model.layers.{0}.attn.qkv_proj", "model.layers.{0}.attn.o_proj", "model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj", "model.layers.{0}.mlp.down_proj"],
    };

    public static IEnumerable<object[]> Models => s_models.Keys.Select(k => new object[] { k });

    private static string[] ExpectedFor(string key)
    {
        string family = key.StartsWith("genai-fused", StringComparison.Ordinal) ? "genai-fused" : s_expected.Keys.First(k => key.StartsWith(k, StringComparison.Ordinal));
        string[] extra = key == "bert" ? ["bert.pooler.dense"] : [];
        return Enumerable.Range(0, 2).SelectMany(l => s_expected[family].Select(m => string.Format(System.Globalization.CultureInfo.InvariantCulture, m, l))).Concat(extra).Order().ToArray();
    }

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void Find_BuilderModel_NamesEveryProjectionAsPeft(string key)
    {
        using Model model = s_models[key]();
        IReadOnlyList<LinearTarget> targets = TargetDiscovery.Find(model);
        CollectionAssert.AreEqual(ExpectedFor(key), targets.Where(t => !t.IsOutputHead).Select(t => t.Module).Order().ToArray());
        Assert.AreEqual(1, targets.Count(t => t.IsOutputHead));
        if (key == "genai-int4")
        {
            Assert.IsTrue(targets.Where(t => !t.IsOutputHead).All(t => t.OpKind == LinearOpKind.MatMulNBits && t.Quantized));
        }
    }

    [TestMethod]
    [DynamicData(nameof(Models))]
    public void Inject_BuilderModel_ZeroBKeepsOutputsAndRandomAdaptersEqualMergedWeights(string key)
    {
        using var dir = new TempDir();
        using Model baseModel = s_models[key]();
        Dictionary<string, float[]> baseOut = OrtRunner.Run(LoraTestSupport.Save(baseModel, dir, "base.onnx"));
        using Model lora = s_models[key]();
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8 });
        float zero = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora0.onnx")), baseOut);
        Assert.IsTrue(zero <= Tolerances.ZeroAdapterAbs, $"B=0 changed outputs by {zero}");

        var adapters = LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 8, scale: 0.05f);
        Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx"));
        float changed = LoraTestSupport.RelativeError(loraOut, baseOut);
        if (key == "genai-int4")
        {
            // The int4 reference (dequantized W + s·A·B) is checked on a single layer in InsertLoraAdaptersPassTests.
            Assert.IsTrue(changed > 1e-3f, $"random adapters barely changed the outputs ({changed})");
            return;
        }

        using Model reference = s_models[key]();
        LoraTestSupport.MergeIntoBase(reference, manifest, adapters);
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "merged.onnx"));
        float tolerance = key.Contains("fp16", StringComparison.Ordinal) ? Tolerances.MergedRelFp16 : Tolerances.MergedRelFp32;
        float rel = LoraTestSupport.RelativeError(loraOut, refOut);
        Console.WriteLine($"{key}: {manifest.Modules.Count} modules; B=0 {zero:E2}; rel error {rel:E2} (tolerance {tolerance:E0}); rel change {changed:E2}");
        Assert.IsTrue(rel <= tolerance, $"relative error {rel} > {tolerance}");
        Assert.IsTrue(changed > 10 * tolerance, $"random adapters barely changed the outputs ({changed})");
    }
}
