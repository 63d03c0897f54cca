using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>The exporter verbs in-process: success paths produce what the library produces; bad input gives the exit code of its kind (2 usage, 5 adapter) and one line naming the file.</summary>
[TestClass]
public sealed class ExporterVerbsTests
{
    private const int Usage = 2, BadAdapter = 5;

    private static void AssertCleanFailure((int ExitCode, string Out, string Err) result, int exitCode, string expected, params string[] mustNotExist)
    {
        Assert.AreEqual(exitCode, result.ExitCode, result.Err + result.Out);
        StringAssert.Contains(result.Err, expected);
        Assert.IsFalse(result.Err.Contains("   at ", StringComparison.Ordinal), result.Err);
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "one line: " + result.Err);
        foreach (string path in mustNotExist)
        {
            Assert.IsFalse(File.Exists(path) || Directory.Exists(path), "partial output " + path);
        }
    }

    private static string LoraModel(TempDir dir, int seed = 11) =>
        LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(), LoraTestModels.RandomWeights(4, 8, seed), LoraPlacement.Initializers), dir.File($"lora-{seed}.onnx"));

    [TestMethod]
    public void Merge_LoraModel_WritesModelEqualToLoraOutput()
    {
        using var dir = new TempDir();
        string lora = LoraModel(dir);

        var (code, output, error) = CliRunner.Run("merge", lora, "-o", dir.File("merged.onnx"));

        Assert.AreEqual(0, code, error);
        StringAssert.Contains(output, "merged 2 modules");
        Assert.IsLessThanOrEqualTo(1e-5, LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("merged.onnx"))["y"], OrtRunner.Run(lora)["y"]));
    }

    [TestMethod]
    public void Merge_GarbageAdapter_FailsCleanlyNamingTheFile()
    {
        using var dir = new TempDir();
        string serving = LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(), LoraTestModels.RandomWeights(4, 8), LoraPlacement.AdapterSlots), dir.File("serving.onnx"));
        File.WriteAllBytes(dir.File("junk.onnx_adapter"), Enumerable.Range(0, 300).Select(i => (byte)(i * 7)).ToArray());

        AssertCleanFailure(CliRunner.Run("merge", serving, "--adapter", dir.File("junk.onnx_adapter"), "-o", dir.File("merged.onnx")), BadAdapter, "junk.onnx_adapter", dir.File("merged.onnx"));
    }

    [TestMethod]
    public void Merge_BaseWithoutAdapter_FailsCleanly()
    {
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        AssertCleanFailure(CliRunner.Run("merge", basePath, "-o", dir.File("merged.onnx")), Usage, "base.onnx", dir.File("merged.onnx"));
    }

    [TestMethod]
    public void Merge_BaseWithPeftAdapter_EqualsLoraModel()
    {
        using var dir = new TempDir();
        (string basePath, string loraPath, LoraWeights weights) = InjectedPair(dir);
        Onnx.Lora.Formats.Peft.PeftAdapter.Export(weights, dir.File("peft"));

        var (code, output, error) = CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("merged.onnx"));

        Assert.AreEqual(0, code, error);
        StringAssert.Contains(output, $"merged {weights.Modules.Count} modules");
        Assert.IsLessThanOrEqualTo(1e-5, LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("merged.onnx"))["y"], OrtRunner.Run(loraPath)["y"]));
    }

    [TestMethod]
    public void Merge_BaseWithAdapterForUnknownModule_FailsListingClosestName()
    {
        using var dir = new TempDir();
        (string basePath, _, LoraWeights weights) = InjectedPair(dir);
        LoraModuleWeights m = weights.Modules[0];
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(new LoraWeights([m with { Module = m.Module + "_typo" }])), dir.File("typo.onnx_adapter"));

        var result = CliRunner.Run("merge", basePath, "--adapter", dir.File("typo.onnx_adapter"), "-o", dir.File("merged.onnx"));

        AssertCleanFailure(result, BadAdapter, "typo.onnx_adapter", dir.File("merged.onnx"));
        StringAssert.Contains(result.Err, "closest: '" + m.Module + "'");
    }

    /// <summary>The stand-in base, and its LoRA model injected by the real rewriter with random A and B.</summary>
    private static (string Base, string Lora, LoraWeights Weights) InjectedPair(TempDir dir)
    {
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        Model model = LoraTestModels.Base();
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
        var rng = new Random(21);
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            model.Graph.Initializers.SetData(info.LoraA, InMemoryTensor.FromFloats(info.LoraA, [info.InFeatures, 4], LoraTestModels.Rand(4 * (int)info.InFeatures, rng, 0.5f)));
            model.Graph.Initializers.SetData(info.LoraB, InMemoryTensor.FromFloats(info.LoraB, [4, info.OutFeatures], LoraTestModels.Rand(4 * (int)info.OutFeatures, rng, 0.5f)));
        }

        string loraPath = LoraTestModels.Save(model, dir.File("lora.onnx"));
        using Model saved = Onnx.Lora.Ir.Serialization.OnnxReader.Load(loraPath);
        return (basePath, loraPath, LoraWeights.FromModel(saved, LoraManifest.Read(saved)!, loraPath));
    }

    [TestMethod]
    public void Combine_TwoAdaptersCat_WritesAdapterWithSummedRanks()
    {
        using var dir = new TempDir();
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(4, 8, seed: 1)), dir.File("a.onnx_adapter"));
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(2, 4, seed: 2)), dir.File("b.onnx_adapter"));

        var (code, _, error) = CliRunner.Run("combine", dir.File("a.onnx_adapter"), dir.File("b.onnx_adapter"), "--weights", "0.5,0.5", "--type", "cat", "-o", dir.File("c.onnx_adapter"));

        Assert.AreEqual(0, code, error);
        LoraWeights combined = AdapterLoader.Load(dir.File("c.onnx_adapter"));
        Assert.IsTrue(combined.Modules.All(m => m.Rank == 6));
    }

    [TestMethod]
    public void Combine_WrongWeightCount_FailsCleanly()
    {
        using var dir = new TempDir();
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(4, 8)), dir.File("a.onnx_adapter"));
        AssertCleanFailure(CliRunner.Run("combine", dir.File("a.onnx_adapter"), "--weights", "1,2", "-o", dir.File("c.onnx_adapter")), Usage, "--weights", dir.File("c.onnx_adapter"));
    }

    [TestMethod]
    public void Combine_TruncatedAdapter_FailsCleanlyNamingTheFile()
    {
        using var dir = new TempDir();
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(4, 8)), dir.File("a.onnx_adapter"));
        byte[] bytes = File.ReadAllBytes(dir.File("a.onnx_adapter"));
        File.WriteAllBytes(dir.File("cut.onnx_adapter"), bytes.AsSpan(0, bytes.Length / 2).ToArray());
        AssertCleanFailure(CliRunner.Run("combine", dir.File("a.onnx_adapter"), dir.File("cut.onnx_adapter"), "-o", dir.File("c.onnx_adapter")), BadAdapter, "cut.onnx_adapter", dir.File("c.onnx_adapter"));
    }

    [TestMethod]
    public void ExportAdapter_Serving_WritesSlotModelAndAdapterOrtAccepts()
    {
        using var dir = new TempDir();
        Model model = LoraTestModels.Base();
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
        var rng = new Random(3);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [4, m.OutFeatures], LoraTestModels.Rand(4 * (int)m.OutFeatures, rng, 0.5f)));
        }

        string lora = LoraTestModels.Save(model, dir.File("lora.onnx"));

        var (code, output, error) = CliRunner.Run("export-adapter", lora, "--serving", dir.File("serving"));

        Assert.AreEqual(0, code, error);
        StringAssert.Contains(output, "adapter slots");
        string adapter = Path.Combine(dir.File("serving"), "adapter.onnx_adapter");
        using Model serving = Onnx.Lora.Ir.Serialization.OnnxReader.Load(Path.Combine(dir.File("serving"), "base-with-slots.onnx"));
        AdapterValidation.ValidateAgainstModel(OnnxAdapterFormat.Read(adapter), serving, adapter);
        using var ortAdapter = Microsoft.ML.OnnxRuntime.OrtLoraAdapter.Create(adapter, null);
        using var options = new Microsoft.ML.OnnxRuntime.RunOptions();
        options.AddActiveLoraAdapter(ortAdapter);
        float[] viaOrt = OrtRunner.Run(Path.Combine(dir.File("serving"), "base-with-slots.onnx"), runOptions: options)["y"];
        Assert.IsLessThanOrEqualTo(1e-5, LoraTestModels.MaxRelError(viaOrt, OrtRunner.Run(lora)["y"]), "adapter through ORT on the slot model = the LoRA model");
    }

    [TestMethod]
    public void ExportAdapter_NoOutputGiven_FailsCleanly()
    {
        using var dir = new TempDir();
        AssertCleanFailure(CliRunner.Run("export-adapter", LoraModel(dir)), Usage, "--output");
    }

    [TestMethod]
    public void ConvertAdapter_GarbageFile_FailsCleanlyNamingTheFile()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("old.fb"), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        AssertCleanFailure(CliRunner.Run("convert-adapter", dir.File("old.fb"), "-o", dir.File("new.onnx_adapter")), BadAdapter, "old.fb", dir.File("new.onnx_adapter"));
    }
}
