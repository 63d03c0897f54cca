using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Rewriter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// Inject tags exactly what it adds (every branch kind: MatMul, Gemm, int4 MatMulNBits, Conv, Embedding, fused
/// attention, DoRA with and without dropout, rsLoRA, serving slots), the tags survive our writer and reader, ORT runs
/// the tagged model, and merge removes exactly the tagged nodes: the merged graph is the base graph and its ORT output
/// equals the unmerged LoRA model's ORT output. Untagged (older) LoRA models are refused with the way out, and that way
/// out works.
/// </summary>
[TestClass]
public sealed class LoraTagsTests
{
    public static IEnumerable<object[]> Kinds =>
    [
        ["matmul"], ["rslora"], ["dora"], ["dora-dropout"], ["gemm"], ["int4"], ["conv-embedding"], ["fused-attention"], ["slots"],
    ];

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Inject_EveryBranchKind_TagsExactlyWhatItAddsAndTagsSurviveSaveAndLoad(string kind)
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir, kind);
        using Model baseModel = OnnxReader.Load(basePath);
        using Model lora = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(lora, OptionsFor(kind));

        var baseNodes = baseModel.Graph.Nodes.Select(n => n.Name).ToHashSet(StringComparer.Ordinal);
        var baseInitializers = baseModel.Graph.Initializers.Values.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var modules = manifest.Modules.Select(m => m.Module).ToHashSet(StringComparer.Ordinal);
        List<Node> tagged = lora.Graph.Nodes.Where(n => LoraTags.ModuleOf(n) is not null).ToList();
        Assert.HasCount(lora.Graph.Nodes.Count - baseModel.Graph.Nodes.Count, tagged, "one tag per added node");
        Assert.IsTrue(tagged.All(n => !baseNodes.Contains(n.Name) && modules.Contains(LoraTags.ModuleOf(n)!)), "tagged nodes are new and name a manifest module");
        Assert.IsTrue(lora.Graph.Nodes.Where(n => LoraTags.ModuleOf(n) is null).All(n => baseNodes.Contains(n.Name)), "every untagged node is a base node");
        foreach (string module in modules)
        {
            Assert.AreEqual(1, tagged.Count(n => LoraTags.ModuleOf(n) == module && LoraTags.ReplacedValueOf(n) is not null), module + ": one node hands a base value back");
        }

        foreach (Value v in lora.Graph.Initializers.Values)
        {
            Assert.AreEqual(!baseInitializers.Contains(v.Name), LoraTags.ModuleOf(v.Initializer!) is not null, $"initializer '{v.Name}' is tagged exactly when inject added it");
        }

        string loraPath = dir.File("lora.onnx");
        OnnxWriter.Save(lora, loraPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        using Model back = OnnxReader.Load(loraPath);
        CollectionAssert.AreEqual(Tags(lora), Tags(back), "node and tensor tags after save + load");
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(loraPath);
        Assert.IsNotEmpty(session.OutputMetadata, "ORT loads the tagged model");
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public void Merge_EveryBranchKind_RemovesExactlyTheTaggedNodesAndEqualsTheLoraModelThroughOrt(string kind)
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir, kind);
        string loraPath = dir.File("lora.onnx");
        string mergedPath = dir.File("merged.onnx");
        string reference = loraPath;
        if (kind == "slots")
        {
            // The adapter comes from a trained (initializer) LoRA model; ORT runs that model as the reference.
            LoraWeights trained = TrainedLora(basePath, dir.File("trained.onnx"), new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "v_proj"] });
            using Model slots = OnnxReader.Load(basePath);
            LoraManifest serving = LoraInjector.Inject(slots, OptionsFor(kind));
            OnnxWriter.Save(slots, loraPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
            string adapterPath = dir.File("a.onnx_adapter");
            OnnxAdapterFormat.Write(trained.ToAdapterFile(serving), adapterPath);
            LoraMerger.Merge(loraPath, mergedPath, adapterPath);
            reference = dir.File("trained.onnx");
        }
        else
        {
            TrainedLora(basePath, loraPath, OptionsFor(kind));
            LoraMerger.Merge(loraPath, mergedPath);
            if (kind == "dora-dropout")
            {
                // The training graph drops activations at random: the reference is the same adapter without dropout.
                reference = dir.File("reference.onnx");
                TrainedLora(basePath, reference, OptionsFor("dora"));
            }
        }

        AssertBaseGraph(basePath, mergedPath);
        // The Gemm model's rows are a free dim 'n'; -1 leaves the others to OrtRunner's defaults.
        Func<string, long> dims = d => d == "n" ? 3 : -1;
        Dictionary<string, float[]> unmerged = OrtRunner.Run(reference, dimFor: dims), merged = OrtRunner.Run(mergedPath, dimFor: dims), baseline = OrtRunner.Run(basePath, dimFor: dims);
        double error = ErrorMetrics.RelativeError(merged, unmerged), effect = ErrorMetrics.RelativeError(baseline, unmerged);
        Console.WriteLine($"{kind}: merged vs LoRA model (ORT) max rel error {error:E2}; adapter effect {effect:E2}");
        // int4: the merged weight is re-quantized to the same grid (its exactness is QuantizedMergeTests'); it must keep most of the effect.
        Assert.IsLessThanOrEqualTo(kind == "int4" ? effect / 4 : Tolerances.MergedRelFp32, error);
        Assert.IsGreaterThan(100 * Tolerances.MergedRelFp32, effect, "the adapter changes the output");
    }

    [TestMethod]
    public void Merge_UntaggedModelOfAnOlderVersion_RefusedNamingTheFileAndTheAdvisedRouteWorks()
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir, "dora");
        string legacyPath = dir.File("legacy.onnx");
        using (Model legacy = OnnxReader.Load(basePath))
        {
            LoraManifest manifest = LoraInjector.Inject(legacy, OptionsFor("dora"));
            LoraTestSupport.RandomizeAdapters(legacy, manifest, seed: 9, scale: 0.2f);
            foreach (Node n in legacy.Graph.Nodes)
            {
                n.MetadataProps.RemoveAll(p => p.Key is LoraTags.ModuleKey or LoraTags.ReplacesKey);
            }

            foreach (Value v in legacy.Graph.Initializers.Values)
            {
                v.Initializer!.MetadataProps.RemoveAll(p => p.Key == LoraTags.ModuleKey);
            }

            OnnxWriter.Save(legacy, legacyPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        }

        var e = Assert.ThrowsExactly<LegacyLoraModelException>(() => LoraMerger.Merge(legacyPath, dir.File("out.onnx")));
        StringAssert.Contains(e.Message, legacyPath);
        StringAssert.Contains(e.Message, "export-adapter");
        Assert.ThrowsExactly<LegacyLoraModelException>(() => ServingExport.Export(legacyPath, new ServingExportOptions { OutputFolder = dir.File("serving") }));

        (int code, _, string stderr) = CliRunner.Run("merge", legacyPath, "-o", dir.File("cli.onnx"));
        Assert.AreEqual(4, code, stderr);
        Assert.AreEqual(1, stderr.TrimEnd().Split('\n').Length, stderr);
        StringAssert.Contains(stderr, "legacy.onnx");
        Assert.IsFalse(File.Exists(dir.File("cli.onnx")));

        // The route the message gives: export the adapter, merge it into the base (no tags needed).
        Assert.AreEqual(0, CliRunner.Run("export-adapter", legacyPath, "--peft", dir.File("peft")).ExitCode);
        Assert.AreEqual(0, CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("merged.onnx")).ExitCode);
        AssertBaseGraph(basePath, dir.File("merged.onnx"));
        double error = ErrorMetrics.RelativeError(OrtRunner.Run(dir.File("merged.onnx")), OrtRunner.Run(legacyPath));
        Assert.IsLessThanOrEqualTo(Tolerances.MergedRelFp32, error);
    }

    [TestMethod]
    public void Merge_BranchNodeReadByTheBaseWithoutAReplacesTag_IsRefusedNamingTheNode()
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir, "matmul");
        string loraPath = dir.File("lora.onnx");
        using (Model lora = OnnxReader.Load(basePath))
        {
            LoraInjector.Inject(lora, OptionsFor("matmul"));
            Node combine = lora.Graph.Nodes.First(n => LoraTags.ReplacedValueOf(n) is not null);
            combine.MetadataProps.RemoveAll(p => p.Key == LoraTags.ReplacesKey);
            OnnxWriter.Save(lora, loraPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        }

        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => LoraMerger.Merge(loraPath, dir.File("out.onnx")));
        StringAssert.Contains(e.Message, LoraTags.ReplacesKey);
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
    }

    private static LoraOptions OptionsFor(string kind) => kind switch
    {
        "rslora" => new LoraOptions { Rank = 4, Alpha = 8, UseRsLora = true },
        "dora" => new LoraOptions { Rank = 4, Alpha = 8, UseDora = true },
        "dora-dropout" => new LoraOptions { Rank = 4, Alpha = 8, UseDora = true, Dropout = 0.1, TrainingGraph = true },
        "conv-embedding" => new LoraOptions { Rank = 4, Alpha = 8, Targets = ["model.embed_tokens", "model.conv1", "model.conv2"] },
        "slots" => new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "v_proj"], Placement = LoraPlacement.AdapterSlots },
        _ => new LoraOptions { Rank = 4, Alpha = 8 },
    };

    private static string SaveBase(TempDir dir, string kind)
    {
        using Model model = kind switch
        {
            "gemm" => LoraTestModels.Base(),
            "int4" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Int4 = true, BlockSize = 16 }),
            "conv-embedding" => ConvLmBuilder.Build(new ConvLmConfig()),
            "fused-attention" => OnnxReader.Load(Fixtures.Path("ortgenai-tiny-random-gpt2-fp32", "past.onnx")),
            _ => TorchLlamaBuilder.Build(new LlamaConfig { Naming = InitializerNaming.Anonymous }),
        };
        string path = dir.File("base.onnx");
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return path;
    }

    /// <summary>Injects <paramref name="options"/> into the base, sets A and B to seeded random values (B ≠ 0) and saves.</summary>
    private static LoraWeights TrainedLora(string basePath, string loraPath, LoraOptions options)
    {
        using Model model = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(model, options);
        LoraTestSupport.RandomizeAdapters(model, manifest, seed: 7, scale: 0.2f);
        OnnxWriter.Save(model, loraPath, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return LoraWeights.FromModel(model, manifest, loraPath);
    }

    private static string[] Tags(Model model) =>
        model.Graph.Nodes.Select(n => $"{n.Name}:{LoraTags.ModuleOf(n)}:{LoraTags.ReplacedValueOf(n)}")
            .Concat(model.Graph.Initializers.Values.Select(v => $"{v.Name}:{LoraTags.ModuleOf(v.Initializer!)}")).ToArray();

    /// <summary>The merged graph is the base graph: same nodes, initializers, inputs and outputs in order, no tag or manifest left.</summary>
    private static void AssertBaseGraph(string basePath, string mergedPath)
    {
        using Model a = OnnxReader.Load(basePath);
        using Model b = OnnxReader.Load(mergedPath);
        CollectionAssert.AreEqual(a.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}:{string.Join(",", n.Inputs.Select(v => v?.Name))}").ToArray(), b.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}:{string.Join(",", n.Inputs.Select(v => v?.Name))}").ToArray(), "nodes and their inputs");
        CollectionAssert.AreEqual(a.Graph.Initializers.Values.Select(v => v.Name).ToArray(), b.Graph.Initializers.Values.Select(v => v.Name).ToArray(), "initializers");
        CollectionAssert.AreEqual(a.Graph.Inputs.Select(v => v.Name).ToArray(), b.Graph.Inputs.Select(v => v.Name).ToArray(), "inputs");
        CollectionAssert.AreEqual(a.Graph.Outputs.Select(v => v.Name).ToArray(), b.Graph.Outputs.Select(v => v.Name).ToArray(), "outputs");
        Assert.IsFalse(b.Graph.Nodes.Any(n => LoraTags.ModuleOf(n) is not null), "no tagged node left");
        Assert.IsNull(LoraManifest.Read(b));
    }
}
