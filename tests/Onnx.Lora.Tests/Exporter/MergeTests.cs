using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

[TestClass]
public sealed class MergeTests
{
    private const double Fp32Tolerance = 1e-5;
    private const double Fp16Tolerance = 1e-2;

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Merge_Fp32LoraModel_MatchesLoraOutputAndBaseNodes(bool dora)
    {
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        LoraWeights weights = LoraTestModels.RandomWeights(rank: 4, alpha: 8, dora: dora);
        string loraPath = LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.Initializers), dir.File("lora.onnx"));

        MergeReport report = LoraMerger.Merge(loraPath, dir.File("merged.onnx"));

        float[] lora = OrtRunner.Run(loraPath)["y"];
        float[] merged = OrtRunner.Run(dir.File("merged.onnx"))["y"];
        float[] baseline = OrtRunner.Run(basePath)["y"];
        Assert.AreEqual(2, report.MergedModules);
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(merged, lora), "merged vs LoRA model");
        Assert.IsGreaterThan(1e-2, LoraTestModels.MaxRelError(baseline, lora), "the adapter must change the output");
        AssertSameNodes(basePath, dir.File("merged.onnx"));
    }

    [TestMethod]
    [DataRow(DataType.Float16)]
    [DataRow(DataType.BFloat16)]
    public void Merge_HalfPrecisionBase_MatchesLoraOutputWithinHalfTolerance(DataType type)
    {
        if (type == DataType.BFloat16)
        {
            // ORT CPU has no bf16 MatMul: check the merged weight against the fp32 merge computed here instead.
            Model lora = LoraTestModels.WithLora(LoraTestModels.Base(type), LoraTestModels.RandomWeights(4, 8), LoraPlacement.Initializers);
            float[] w0 = lora.Graph.Initializers["qkv.weight"].Initializer!.ToFloat32();
            LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
            LoraMerger.MergeInto(lora, LoraManifest.Read(lora)!, weights, "test");
            float[] got = lora.Graph.Initializers["qkv.weight"].Initializer!.ToFloat32();
            LoraModuleWeights m = weights.Modules[0];
            for (int i = 0; i < 16; i++)
            {
                for (int j = 0; j < 48; j++)
                {
                    double expected = w0[(i * 48) + j] + (m.Scale * Enumerable.Range(0, 4).Sum(k => (double)m.A[(i * 4) + k] * m.B[(k * 48) + j]));
                    Assert.AreEqual(expected, got[(i * 48) + j], Math.Abs(expected) * 8e-3 + 1e-6, $"bf16 merged W[{i},{j}] (rounded once: ≤ half an ulp of bf16)");
                }
            }

            return;
        }

        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(type), dir.File("base.onnx"));
        string loraPath = LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(type), LoraTestModels.RandomWeights(4, 8), LoraPlacement.Initializers), dir.File("lora.onnx"));
        LoraMerger.Merge(loraPath, dir.File("merged.onnx"));
        double err = LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("merged.onnx"))["y"], OrtRunner.Run(loraPath)["y"]);
        Assert.IsLessThanOrEqualTo(Fp16Tolerance, err);
        AssertSameNodes(basePath, dir.File("merged.onnx"));
    }

    [TestMethod]
    public void OrtLoraAdapter_OurAdapterFileOnServingModel_EqualsMergedModel()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(rank: 16, alpha: 32);
        Model serving = LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.AdapterSlots);
        LoraManifest manifest = LoraManifest.Read(serving)!;
        string servingPath = LoraTestModels.Save(serving, dir.File("serving.onnx"));
        string adapterPath = dir.File("task.onnx_adapter");
        OnnxAdapterFormat.Write(weights.ToAdapterFile(manifest), adapterPath);
        AdapterValidation.ValidateAgainstModel(OnnxAdapterFormat.Read(adapterPath), serving, adapterPath);

        LoraMerger.Merge(servingPath, dir.File("merged.onnx"), adapterPath);
        float[] merged = OrtRunner.Run(dir.File("merged.onnx"))["y"];
        float[] viaOrt;
        using (OrtLoraAdapter adapter = OrtLoraAdapter.Create(adapterPath, null))
        using (var options = new RunOptions())
        {
            options.AddActiveLoraAdapter(adapter);
            viaOrt = OrtRunner.Run(servingPath, runOptions: options)["y"];
        }

        float[] noAdapter = OrtRunner.Run(servingPath)["y"];
        float[] baseline = OrtRunner.Run(LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")))["y"];
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(viaOrt, merged), "ORT adapter path vs merged");
        Assert.AreEqual(0f, OrtRunner.MaxAbsDiff(noAdapter, baseline), "r = 0 defaults add nothing");
        Assert.IsGreaterThan(1e-2, LoraTestModels.MaxRelError(baseline, merged));
    }

    [TestMethod]
    public void Merge_AdapterWithUnknownTensor_ThrowsAndWritesNothing()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
        Model serving = LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.AdapterSlots);
        AdapterFile file = weights.ToAdapterFile(LoraManifest.Read(serving)!);
        file = file with { Parameters = [.. file.Parameters, AdapterParameter.FromFloats("model.layers.9.mlp.down_proj.lora_A.weight", [2], [1f, 2f])] };
        OnnxAdapterFormat.Write(file, dir.File("bad.onnx_adapter"));
        string servingPath = LoraTestModels.Save(serving, dir.File("serving.onnx"));

        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => LoraMerger.Merge(servingPath, dir.File("merged.onnx"), dir.File("bad.onnx_adapter")));
        StringAssert.Contains(e.Message, "model.layers.9.mlp.down_proj.lora_A.weight");
        Assert.IsFalse(File.Exists(dir.File("merged.onnx")));
    }

    [TestMethod]
    public void Merge_ExternalDataBase_StreamsIntoOwnDataFileAndLeavesInputUntouched()
    {
        using var dir = new TempDir();
        Model lora = LoraTestModels.WithLora(LoraTestModels.Base(), LoraTestModels.RandomWeights(4, 8), LoraPlacement.Initializers);
        string loraPath = dir.File("lora.onnx");
        OnnxWriter.Save(lora, loraPath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 16 });
        byte[] before = File.ReadAllBytes(loraPath + ".data");

        LoraMerger.Merge(loraPath, dir.File("merged.onnx"));

        CollectionAssert.AreEqual(before, File.ReadAllBytes(loraPath + ".data"));
        Assert.IsTrue(File.Exists(dir.File("merged.onnx.data")));
        Assert.IsLessThanOrEqualTo(Fp32Tolerance, LoraTestModels.MaxRelError(OrtRunner.Run(dir.File("merged.onnx"))["y"], OrtRunner.Run(loraPath)["y"]));
    }

    [TestMethod]
    public void Merge_NaNInAdapter_ThrowsNamingModuleAndWritesNothing()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
        weights.Modules[1].B[3] = float.NaN;
        string loraPath = LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.Initializers), dir.File("lora.onnx"));

        var e = Assert.Throws<LoraException>(() => LoraMerger.Merge(loraPath, dir.File("merged.onnx")));

        StringAssert.Contains(e.ToString(), LoraTestModels.Layers[1].Module);
        Assert.IsFalse(File.Exists(dir.File("merged.onnx")));
    }

    private static void AssertSameNodes(string basePath, string mergedPath)
    {
        using Model a = OnnxReader.Load(basePath);
        using Model b = OnnxReader.Load(mergedPath);
        CollectionAssert.AreEqual(a.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}").ToArray(), b.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}").ToArray());
        CollectionAssert.AreEquivalent(a.Graph.Initializers.Values.Select(v => v.Name).ToArray(), b.Graph.Initializers.Values.Select(v => v.Name).ToArray());
        CollectionAssert.AreEqual(a.Graph.Inputs.Select(v => v.Name).ToArray(), b.Graph.Inputs.Select(v => v.Name).ToArray());
        Assert.IsNull(LoraManifest.Read(b));
    }
}
