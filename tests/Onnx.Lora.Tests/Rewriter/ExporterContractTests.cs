using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>The manifest the rewriter writes is enough for the exporter's merge: merged output ≈ LoRA output.</summary>
[TestClass]
public sealed class ExporterContractTests
{
    [TestMethod]
    [DataRow("stories260K/reference-onnx/model.onnx", false)]
    [DataRow("stories260K/reference-onnx/model.onnx", true)]
    [DataRow("ortgenai-tiny-random-llama-fp32/model.onnx", false)]
    public void Merge_InjectedFixture_MatchesLoraOutputs(string relativePath, bool dora)
    {
        using var dir = new TempDir();
        using Model lora = OnnxReader.Load(Fixtures.Path(relativePath));
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8, UseDora = dora });
        LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 3, scale: 0.05f);
        string loraPath = LoraTestSupport.Save(lora, dir, "lora.onnx");
        Dictionary<string, float[]> loraOut = OrtRunner.Run(loraPath);

        string mergedPath = dir.File("merged.onnx");
        LoraMerger.Merge(loraPath, mergedPath, null);
        Dictionary<string, float[]> mergedOut = OrtRunner.Run(mergedPath);
        float rel = LoraTestSupport.RelativeError(mergedOut, loraOut);
        Console.WriteLine($"{relativePath} dora={dora}: merged vs LoRA rel error {rel:E2}");
        Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
    }

    [TestMethod]
    public void Merge_SlotModelWithAdapterFile_MatchesOrtAdapterRun()
    {
        using var dir = new TempDir();
        using Model slots = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        LoraManifest manifest = LoraInjector.Inject(slots, new LoraOptions { Targets = ["q_proj", "o_proj"], Placement = LoraPlacement.AdapterSlots });
        string slotsPath = LoraTestSupport.Save(slots, dir, "slots.onnx");
        const int R = 2;
        int seed = 60;
        var parameters = manifest.Modules.SelectMany(m => new[]
        {
            Onnx.Lora.Formats.AdapterParameter.FromFloats(m.LoraA, [m.InFeatures, R], LoraTestSupport.Random((int)m.InFeatures * R, seed++, 0.1f)),
            Onnx.Lora.Formats.AdapterParameter.FromFloats(m.LoraB, [R, m.OutFeatures], LoraTestSupport.Random(R * (int)m.OutFeatures, seed++, 0.1f)),
        }).ToList();
        string adapterPath = dir.File("task.onnx_adapter");
        Onnx.Lora.Formats.OnnxAdapterFormat.Write(new Onnx.Lora.Formats.AdapterFile { Parameters = parameters }, adapterPath);

        Dictionary<string, float[]> viaOrt;
        using (var adapter = Microsoft.ML.OnnxRuntime.OrtLoraAdapter.Create(adapterPath, null))
        using (var options = new Microsoft.ML.OnnxRuntime.RunOptions())
        {
            options.AddActiveLoraAdapter(adapter);
            viaOrt = OrtRunner.Run(slotsPath, runOptions: options);
        }

        string mergedPath = dir.File("merged.onnx");
        LoraMerger.Merge(slotsPath, mergedPath, adapterPath);
        float rel = LoraTestSupport.RelativeError(OrtRunner.Run(mergedPath), viaOrt);
        Console.WriteLine($"slots + adapter: merged vs ORT adapter run rel error {rel:E2}");
        Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
    }
}
