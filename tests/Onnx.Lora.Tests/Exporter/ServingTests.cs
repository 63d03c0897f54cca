using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.GenAi;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// Serving models with adapter slots, base + adapter merges and GenAI folders, on ORT GenAI's own tiny Llama
/// (fused qkv, GroupQueryAttention, KV cache, external data) with adapters injected by the real rewriter.
/// </summary>
[TestClass]
public sealed class ServingTests
{
    private const double Fp32Tolerance = 1e-5;
    private static readonly string s_fixture = Fixtures.Path("ortgenai-tiny-random-llama-fp32");

    private static string BasePath => Path.Combine(s_fixture, "model.onnx");

    [TestMethod]
    public void ServingExport_TwoAdaptersOfDifferentRanks_EachThroughOrtLoraAdapterEqualsItsMerge()
    {
        using var dir = new TempDir();
        (string loraPath, LoraWeights trained) = TrainedLoraModel(dir, rank: 4, seed: 1);
        LoraWeights other = RandomLike(trained, rank: 8, seed: 2);
        PeftAdapter.Export(other, dir.File("peft"));

        ServingExportReport report = ServingExport.Export(loraPath, new ServingExportOptions
        {
            OutputFolder = dir.File("serving"),
            Adapters = [new ServingAdapter("trained", loraPath), new ServingAdapter("other", dir.File("peft"))],
        });

        float[] noAdapter = Logits(OrtRunner.Run(report.ModelPath));
        float[] baseline = Logits(OrtRunner.Run(BasePath));
        Assert.AreEqual(0f, OrtRunner.MaxAbsDiff(noAdapter, baseline), "r = 0 slots add nothing");
        float[] viaLoraModel = Logits(OrtRunner.Run(loraPath));
        var outputs = new Dictionary<string, float[]>();
        foreach ((string name, string adapterPath) in report.AdapterPaths)
        {
            float[] viaOrt = RunWithAdapter(report.ModelPath, adapterPath);
            BaseModelMerge.Merge(BasePath, adapterPath, dir.File(name + "-merged.onnx"));
            float[] merged = Logits(OrtRunner.Run(dir.File(name + "-merged.onnx")));
            Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(viaOrt, merged), $"{name}: OrtLoraAdapter on the serving model vs merged");
            Assert.IsGreaterThan(1e-3, LoraTestModels.MaxRelError(baseline, merged), $"{name} must change the logits");
            outputs[name] = viaOrt;
        }

        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(outputs["trained"], viaLoraModel), "adapter file vs the LoRA model it came from");
        Assert.IsGreaterThan(1e-3, LoraTestModels.MaxRelError(outputs["other"], outputs["trained"]));
        using OrtLoraAdapter a = OrtLoraAdapter.Create(report.AdapterPaths["other"], null);
        Assert.AreEqual(8, OnnxAdapterFormat.Read(report.AdapterPaths["other"]).Parameters[0].Dims[1], "rank 8 adapter on the same serving model as rank 4");
    }

    [TestMethod]
    public void ServingExport_AdapterWithPerModuleRanks_RunsThroughOrtAndEqualsMerge()
    {
        // rank_pattern adapters: ORT binds a dim name to one size per run, so each slot needs its own rank dim.
        using var dir = new TempDir();
        (_, LoraWeights trained) = TrainedLoraModel(dir, rank: 2, seed: 6);
        var rng = new Random(7);
        var mixed = new LoraWeights(trained.Modules.Select((m, i) =>
        {
            int r = i % 2 == 0 ? 2 : 6;
            return new LoraModuleWeights(m.Module, m.InFeatures, m.OutFeatures, r, LoraTestModels.Rand(m.InFeatures * r, rng, 0.5f), LoraTestModels.Rand(r * m.OutFeatures, rng, 0.5f), 1f);
        }));
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(mixed), dir.File("mixed.onnx_adapter"));

        ServingExportReport report = ServingExport.Export(BasePath, new ServingExportOptions
        {
            OutputFolder = dir.File("serving"),
            Adapters = [new ServingAdapter("mixed", dir.File("mixed.onnx_adapter"))],
        });
        BaseModelMerge.Merge(BasePath, dir.File("mixed.onnx_adapter"), dir.File("merged.onnx"));

        float[] viaOrt = RunWithAdapter(report.ModelPath, report.AdapterPaths["mixed"]);
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(viaOrt, Logits(OrtRunner.Run(dir.File("merged.onnx")))));
    }

    [TestMethod]
    public void BaseModelMerge_PeftAdapter_EqualsLoraModelAndKeepsBaseNodes()
    {
        using var dir = new TempDir();
        (string loraPath, LoraWeights trained) = TrainedLoraModel(dir, rank: 4, seed: 3);
        PeftAdapter.Export(trained, dir.File("peft"));

        MergeReport report = BaseModelMerge.Merge(BasePath, dir.File("peft"), dir.File("merged.onnx"));

        Assert.AreEqual(trained.Modules.Count, report.MergedModules);
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(Logits(OrtRunner.Run(dir.File("merged.onnx"))), Logits(OrtRunner.Run(loraPath))));
        using Model a = OnnxReader.Load(BasePath);
        using Model b = OnnxReader.Load(dir.File("merged.onnx"));
        CollectionAssert.AreEqual(a.Graph.Nodes.Select(n => n.Name + ":" + n.OpType).ToArray(), b.Graph.Nodes.Select(n => n.Name + ":" + n.OpType).ToArray());
        CollectionAssert.AreEquivalent(a.Graph.Initializers.Values.Select(v => v.Name).ToArray(), b.Graph.Initializers.Values.Select(v => v.Name).ToArray());
    }

    [TestMethod]
    public void BaseModelMerge_ModuleMatchingNoLayer_ThrowsListingClosestNamesAndWritesNothing()
    {
        using var dir = new TempDir();
        (_, LoraWeights trained) = TrainedLoraModel(dir, rank: 2, seed: 4);
        LoraModuleWeights first = trained.Modules[0];
        var typo = new LoraWeights([first with { Module = first.Module + "x" }]);
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(typo), dir.File("typo.onnx_adapter"));

        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => BaseModelMerge.Merge(BasePath, dir.File("typo.onnx_adapter"), dir.File("merged.onnx")));

        StringAssert.Contains(e.Message, first.Module + "x");
        StringAssert.Contains(e.Message, "closest: '" + first.Module + "'");
        StringAssert.Contains(e.Message, "typo.onnx_adapter");
        Assert.IsFalse(File.Exists(dir.File("merged.onnx")));
    }

    [TestMethod]
    public void GenAiFolder_ServingModelWithAdapters_IsLaidOutAsGenAiExpectsAndRuns()
    {
        using var dir = new TempDir();
        (string loraPath, _) = TrainedLoraModel(dir, rank: 4, seed: 5);
        ServingExportReport serving = ServingExport.Export(loraPath, new ServingExportOptions { OutputFolder = dir.File("serving") });

        // A config with the legacy root "adapters" key, which today's GenAI parser rejects: it must be dropped.
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(s_fixture, "genai_config.json")))!.AsObject();
        config["adapters"] = new JsonObject { ["old"] = new JsonObject { ["weights"] = "x.fb" } };
        File.WriteAllText(dir.File("genai_config.json"), config.ToJsonString());

        GenAiFolderReport report = GenAiFolder.Write(new GenAiFolderOptions
        {
            ModelPath = serving.ModelPath,
            OutputFolder = dir.File("genai"),
            GenAiConfigPath = dir.File("genai_config.json"),
            TokenizerFolder = s_fixture,
            Adapters = [new GenAiAdapter("task", serving.AdapterPaths[ServingExport.DefaultAdapterName])],
        });

        string root = dir.File("genai");
        JsonObject written = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "genai_config.json")))!.AsObject();
        Assert.IsNull(written["adapters"], "GenAI's config parser throws on unknown root keys");
        Assert.AreEqual("model.onnx", written["model"]!["decoder"]!["filename"]!.GetValue<string>());
        Assert.AreEqual(config["model"]!["decoder"]!["num_hidden_layers"]!.GetValue<int>(), written["model"]!["decoder"]!["num_hidden_layers"]!.GetValue<int>());
        foreach (string f in new[] { "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", Path.Combine("adapters", "task.onnx_adapter") })
        {
            Assert.IsTrue(File.Exists(Path.Combine(root, f)), f);
            CollectionAssert.Contains(report.Files.ToArray(), f);
        }

        float[] inFolder = RunWithAdapter(Path.Combine(root, "model.onnx"), Path.Combine(root, "adapters", "task.onnx_adapter"));
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(inFolder, Logits(OrtRunner.Run(loraPath))));
    }

    [TestMethod]
    public void GenAiFolder_ConfigNamingMissingInput_ThrowsAndWritesNoFolder()
    {
        using var dir = new TempDir();
        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(s_fixture, "genai_config.json")))!.AsObject();
        config["model"]!["decoder"]!["inputs"]!["past_key_names"] = "past.%d.k";
        File.WriteAllText(dir.File("genai_config.json"), config.ToJsonString());

        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => GenAiFolder.Write(new GenAiFolderOptions
        {
            ModelPath = BasePath,
            OutputFolder = dir.File("genai"),
            GenAiConfigPath = dir.File("genai_config.json"),
            TokenizerFolder = s_fixture,
        }));

        StringAssert.Contains(e.Message, "past.0.k");
        Assert.IsFalse(Directory.Exists(dir.File("genai")));
        Assert.IsEmpty(Directory.GetDirectories(dir.Path));
    }

    /// <summary>The fixture with LoRA (rewriter, Initializers placement) on every linear layer but the head, A and B random.</summary>
    private static (string Path, LoraWeights Weights) TrainedLoraModel(TempDir dir, int rank, int seed)
    {
        using Model model = OnnxReader.Load(BasePath);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = rank, Alpha = 2 * rank });
        var rng = new Random(seed);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            model.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, rank], LoraTestModels.Rand((int)m.InFeatures * rank, rng, 0.5f)));
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [rank, m.OutFeatures], LoraTestModels.Rand(rank * (int)m.OutFeatures, rng, 0.5f)));
        }

        string path = dir.File($"lora-{seed}.onnx");
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        using Model saved = OnnxReader.Load(path);
        return (path, LoraWeights.FromModel(saved, LoraManifest.Read(saved)!, path));
    }

    private static LoraWeights RandomLike(LoraWeights like, int rank, int seed)
    {
        var rng = new Random(seed);
        return new LoraWeights(like.Modules.Select(m => new LoraModuleWeights(m.Module, m.InFeatures, m.OutFeatures, rank,
            LoraTestModels.Rand(m.InFeatures * rank, rng, 0.5f), LoraTestModels.Rand(rank * m.OutFeatures, rng, 0.5f), 0.5f)));
    }

    private static float[] RunWithAdapter(string modelPath, string adapterPath)
    {
        using OrtLoraAdapter adapter = OrtLoraAdapter.Create(adapterPath, null);
        using var options = new RunOptions();
        options.AddActiveLoraAdapter(adapter);
        return Logits(OrtRunner.Run(modelPath, runOptions: options));
    }

    private static float[] Logits(Dictionary<string, float[]> outputs) => outputs["logits"];
}
