using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

[TestClass]
public sealed class AdapterSlotValidationTests
{
    [TestMethod]
    public void ValidateAgainstModel_PerModuleRanksOnOneSharedRankDim_ThrowsAsOrtWouldFail()
    {
        // The stand-in serving model gives every slot the same symbolic rank dim 'lora_r'.
        using var dir = new TempDir();
        Model serving = LoraTestModels.WithLora(LoraTestModels.Base(), LoraTestModels.RandomWeights(4, 8), LoraPlacement.AdapterSlots);
        LoraManifest manifest = LoraManifest.Read(serving)!;
        var rng = new Random(9);
        var mixed = new LoraWeights(LoraTestModels.Layers.Select((l, i) =>
        {
            int r = i == 0 ? 2 : 6;
            return new LoraModuleWeights(l.Module, l.In, l.Out, r, LoraTestModels.Rand(l.In * r, rng, 0.5f), LoraTestModels.Rand(r * l.Out, rng, 0.5f), 1f);
        }));
        AdapterFile adapter = mixed.ToAdapterFile(manifest);
        string servingPath = LoraTestModels.Save(serving, dir.File("serving.onnx"));
        string adapterPath = dir.File("mixed.onnx_adapter");
        OnnxAdapterFormat.Write(adapter, adapterPath);

        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => AdapterValidation.ValidateAgainstModel(adapter, serving, adapterPath));
        StringAssert.Contains(e.Message, "'lora_r'");
        StringAssert.Contains(e.Message, "mixed.onnx_adapter");

        // The independent fact the check stands for: ORT itself fails on this adapter and model.
        using OrtLoraAdapter ortAdapter = OrtLoraAdapter.Create(adapterPath, null);
        using var options = new RunOptions();
        options.AddActiveLoraAdapter(ortAdapter);
        Assert.ThrowsExactly<OnnxRuntimeException>(() => OrtRunner.Run(servingPath, runOptions: options));
    }
}
