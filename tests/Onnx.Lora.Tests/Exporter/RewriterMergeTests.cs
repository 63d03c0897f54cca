using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// Merge on the branch shapes the real rewriter writes (fp16 casts, rsLoRA, DoRA, dropout in training graphs, fused
/// qkv, com.microsoft Attention weights, int4 MatMulNBits) and on model-builder graphs in the shapes real exporters
/// emit: merged output ≈ LoRA output through ORT, and the merged graph is the base graph.
/// </summary>
[TestClass]
public sealed class RewriterMergeTests
{
    private const double Fp32Tolerance = 1e-5, Fp16Tolerance = 1e-2;

    public static IEnumerable<object[]> Cases =>
    [
        ["torch-fp32", "plain"],
        ["torch-fp32", "rslora"],
        ["torch-fp32", "dora"],
        ["genai-fp16", "plain"],
        ["genai-fp32-fused-qkv", "plain"],
        ["gpt2-fused-attention", "plain"],
    ];

    [TestMethod]
    [DynamicData(nameof(Cases))]
    public void Merge_RewriterBranches_MatchesLoraModelAndKeepsBaseGraph(string modelKind, string variant)
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.onnx");
        using (Model model = Build(modelKind))
        {
            OnnxWriter.Save(model, basePath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        }

        string loraPath = Inject(basePath, dir.File("lora.onnx"), new LoraOptions { Rank = 4, Alpha = 8, UseRsLora = variant == "rslora", UseDora = variant == "dora" }, seed: 3);
        MergeReport report = LoraMerger.Merge(loraPath, dir.File("merged.onnx"));

        var lora = OrtRunner.Run(loraPath);
        var merged = OrtRunner.Run(dir.File("merged.onnx"));
        var baseline = OrtRunner.Run(basePath);
        string output = lora.ContainsKey("logits") ? "logits" : lora.Keys.First();
        double tolerance = modelKind.Contains("fp16", StringComparison.Ordinal) ? Fp16Tolerance : Fp32Tolerance;
        double error = LoraTestModels.MaxRelError(merged[output], lora[output]);
        Console.WriteLine($"{modelKind}/{variant}: {report.MergedModules} modules, {report.RemovedNodes} LoRA nodes removed; merged vs LoRA max rel error {error:E2} (tolerance {tolerance:E0})");
        Assert.IsLessThanOrEqualTo(tolerance, error);
        Assert.IsGreaterThan(10 * tolerance, LoraTestModels.MaxRelError(baseline[output], lora[output]), "the adapter changes the output far beyond the tolerance");
        AssertBaseGraph(basePath, dir.File("merged.onnx"));
    }

    [TestMethod]
    public void Merge_TrainingGraphWithDropout_RemovesDropoutAndItsConstants()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.onnx");
        using (Model model = Build("torch-fp32"))
        {
            OnnxWriter.Save(model, basePath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        }

        string loraPath = Inject(basePath, dir.File("lora.onnx"), new LoraOptions { Rank = 4, Alpha = 8, Dropout = 0.1, TrainingGraph = true, UseDora = true }, seed: 4);
        using (Model lora = OnnxReader.Load(loraPath))
        {
            Assert.IsTrue(lora.Graph.Nodes.Any(n => n.OpType == "Dropout"), "the training graph has dropout");
        }

        LoraMerger.Merge(loraPath, dir.File("merged.onnx"));
        AssertBaseGraph(basePath, dir.File("merged.onnx"));
    }

    [TestMethod]
    public void Merge_Int4GenAiDecoder_RequantizedKeepsGraphAndFloatCopyIsExact()
    {
        using var dir = new TempDir();
        string basePath = dir.File("base.onnx");
        using (Model model = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Int4 = true, BlockSize = 16 }))
        {
            OnnxWriter.Save(model, basePath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        }

        string loraPath = Inject(basePath, dir.File("lora.onnx"), new LoraOptions { Rank = 4, Alpha = 8 }, seed: 5, scale: 0.2f);
        MergeReport requantized = LoraMerger.Merge(loraPath, dir.File("requantized.onnx"));
        MergeReport floatCopy = LoraMerger.Merge(loraPath, dir.File("float.onnx"), options: new MergeOptions { Quantized = QuantizedMergeMode.FloatCopy });

        float[] lora = OrtRunner.Run(loraPath)["logits"];
        float[] baseline = OrtRunner.Run(basePath)["logits"];
        double floatError = LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("float.onnx"))["logits"], lora);
        double quantError = LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("requantized.onnx"))["logits"], lora);
        double effect = LoraTestModels.MaxRelError(baseline, lora);
        Console.WriteLine($"int4 decoder: {requantized.Quantization.Count} modules re-quantized, worst weight error {requantized.Quantization.Max(q => q.MaxAbs):E3} (≤ step/2 = {requantized.Quantization.Max(q => q.MaxStep) / 2:E3}); logits rel error requantized {quantError:E3}, float copy {floatError:E2}, adapter effect {effect:E3}");
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, floatError);
        Assert.IsTrue(requantized.Quantization.All(q => q.MaxAbs <= (q.MaxStep / 2) + 1e-6));
        Assert.IsLessThan(effect / 4, quantError, "re-quantization keeps most of the adapter's effect");
        Assert.IsEmpty(requantized.ReplacedNodes);
        Assert.AreEqual(requantized.MergedModules, floatCopy.ReplacedNodes.Count);
        AssertBaseGraph(basePath, dir.File("requantized.onnx"));
    }

    private static Model Build(string kind) => kind switch
    {
        "torch-fp32" => TorchLlamaBuilder.Build(new LlamaConfig { Naming = InitializerNaming.Anonymous }),
        "genai-fp16" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Precision = DataType.Float16 }),
        "genai-fp32-fused-qkv" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { FusedQkv = true }),
        "gpt2-fused-attention" => OnnxReader.Load(Fixtures.Path("ortgenai-tiny-random-gpt2-fp32", "past.onnx")),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>Injects with the rewriter and sets every A and B to seeded random values (B ≠ 0).</summary>
    private static string Inject(string basePath, string loraPath, LoraOptions options, int seed, float scale = 0.2f)
    {
        using Model model = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(model, options);
        var rng = new Random(seed);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            model.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, m.Rank], LoraTestModels.Rand((int)m.InFeatures * m.Rank, rng, scale)));
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], LoraTestModels.Rand(m.Rank * (int)m.OutFeatures, rng, scale)));
        }

        OnnxWriter.Save(model, loraPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return loraPath;
    }

    private static void AssertBaseGraph(string basePath, string mergedPath)
    {
        using Model a = OnnxReader.Load(basePath);
        using Model b = OnnxReader.Load(mergedPath);
        // The merged graph is the base graph: same nodes in the same order (injection only adds nodes, and the
        // topological sort keeps existing nodes in their relative order).
        CollectionAssert.AreEqual(a.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}").ToArray(), b.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}").ToArray(), "node list");
        CollectionAssert.AreEqual(a.Graph.Initializers.Values.Select(v => v.Name).ToArray(), b.Graph.Initializers.Values.Select(v => v.Name).ToArray(), "initializers");
        CollectionAssert.AreEqual(a.Graph.Inputs.Select(v => v.Name).ToArray(), b.Graph.Inputs.Select(v => v.Name).ToArray(), "inputs");
        CollectionAssert.AreEqual(a.Graph.Outputs.Select(v => v.Name).ToArray(), b.Graph.Outputs.Select(v => v.Name).ToArray(), "outputs");
        Assert.IsNull(LoraManifest.Read(b));
    }
}
