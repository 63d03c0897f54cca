using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>An adapter-slot model made from a real fixture serves "no adapter" and an ORT .onnx_adapter.</summary>
[TestClass]
public sealed class AdapterSlotsOrtTests
{
    [TestMethod]
    public void Run_SlotModelWithOrtAdapter_EqualsBaseWithMergedWeights()
    {
        using var dir = new TempDir();
        string basePath = Fixtures.Path("stories260K", "reference-onnx", "model.onnx");
        Dictionary<string, float[]> baseOut = OrtRunner.Run(basePath);
        using Model slots = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(slots, new LoraOptions { Targets = ["q_proj", "v_proj", "down_proj"], Placement = LoraPlacement.AdapterSlots });
        Assert.AreEqual(15, manifest.Modules.Count);
        string slotsPath = LoraTestSupport.Save(slots, dir, "slots.onnx");

        float none = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(slotsPath), baseOut);
        Assert.IsTrue(none <= Tolerances.ZeroAdapterAbs, $"no adapter changed the logits by {none}");

        // A rank-3 adapter, B with the scale folded in (as Olive/GenAI adapters carry it), written as .onnx_adapter.
        const int R = 3;
        var parameters = new List<AdapterParameter>();
        var adapters = new Dictionary<string, (float[] A, float[] B)>();
        int seed = 40;
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            float[] a = LoraTestSupport.Random((int)m.InFeatures * R, seed++, 0.1f);
            float[] b = LoraTestSupport.Random(R * (int)m.OutFeatures, seed++, 0.1f);
            parameters.Add(AdapterParameter.FromFloats(m.LoraA, [m.InFeatures, R], a));
            parameters.Add(AdapterParameter.FromFloats(m.LoraB, [R, m.OutFeatures], b));
            adapters[m.Module] = (a, b);
        }

        string adapterPath = dir.File("task.onnx_adapter");
        OnnxAdapterFormat.Write(new AdapterFile { Parameters = parameters }, adapterPath);
        Dictionary<string, float[]> viaOrt;
        using (OrtLoraAdapter adapter = OrtLoraAdapter.Create(adapterPath, null))
        using (var options = new RunOptions())
        {
            options.AddActiveLoraAdapter(adapter);
            viaOrt = OrtRunner.Run(slotsPath, runOptions: options);
        }

        // Reference: the base model with W + A·B (scale 1: folded into B) computed here.
        using Model reference = OnnxReader.Load(basePath);
        LoraManifest unitScale = manifest with { Modules = manifest.Modules.Select(m => m with { Rank = R, Alpha = R }).ToList() };
        LoraTestSupport.MergeIntoBase(reference, unitScale, adapters);
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "ref.onnx"));
        float rel = LoraTestSupport.RelativeError(viaOrt, refOut);
        Console.WriteLine($"slots + .onnx_adapter vs merged base: rel error {rel:E2}; no adapter vs base {none:E2}");
        Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
        Assert.IsTrue(LoraTestSupport.RelativeError(viaOrt, baseOut) > 1e-3f, "the adapter did not change the logits");
    }

    [TestMethod]
    public void Run_CliSlotModelWithPerModuleRankAdapter_EqualsBaseWithMergedWeights()
    {
        // PEFT rank_pattern: q_proj at rank 4, v_proj at rank 8, in ONE adapter. ORT binds a symbolic dim to one size
        // per run, so this fails ("Shape mismatch attempting to re-use buffer") unless each module has its own rank dim.
        using var dir = new TempDir();
        string basePath = Fixtures.Path("stories260K", "reference-onnx", "model.onnx");
        string slotsPath = dir.File("slots.onnx");
        (int code, _, string stderr) = CliRunner.Run("inject", basePath, "-o", slotsPath, "--adapter-slots", "--targets", "q_proj,v_proj");
        Assert.AreEqual(0, code, stderr);
        LoraManifest manifest;
        using (Model slots = OnnxReader.Load(slotsPath))
        {
            manifest = LoraManifest.Read(slots)!;
        }

        Assert.AreEqual(10, manifest.Modules.Count);
        var parameters = new List<AdapterParameter>();
        var adapters = new Dictionary<string, (float[] A, float[] B)>();
        var ranks = new Dictionary<string, int>();
        int seed = 70;
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            int r = m.Module.EndsWith("q_proj", StringComparison.Ordinal) ? 4 : 8;
            float[] a = LoraTestSupport.Random((int)m.InFeatures * r, seed++, 0.1f);
            float[] b = LoraTestSupport.Random(r * (int)m.OutFeatures, seed++, 0.1f);
            parameters.Add(AdapterParameter.FromFloats(m.LoraA, [m.InFeatures, r], a));
            parameters.Add(AdapterParameter.FromFloats(m.LoraB, [r, m.OutFeatures], b));
            adapters[m.Module] = (a, b);
            ranks[m.Module] = r;
        }

        Assert.AreEqual(2, ranks.Values.Distinct().Count());
        string adapterPath = dir.File("mixed.onnx_adapter");
        OnnxAdapterFormat.Write(new AdapterFile { Parameters = parameters }, adapterPath);
        Dictionary<string, float[]> viaOrt;
        using (OrtLoraAdapter adapter = OrtLoraAdapter.Create(adapterPath, null))
        using (var options = new RunOptions())
        {
            options.AddActiveLoraAdapter(adapter);
            viaOrt = OrtRunner.Run(slotsPath, runOptions: options);
        }

        // Reference: the base model with W + A·B per module (scale 1: folded into B) computed here.
        using Model reference = OnnxReader.Load(basePath);
        LoraManifest unitScale = manifest with { Modules = manifest.Modules.Select(m => m with { Rank = ranks[m.Module], Alpha = ranks[m.Module], UseRsLora = false }).ToList() };
        LoraTestSupport.MergeIntoBase(reference, unitScale, adapters);
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "ref.onnx"));
        float rel = LoraTestSupport.RelativeError(viaOrt, refOut);
        Console.WriteLine($"slots (ranks 4 and 8) + .onnx_adapter vs merged base: rel error {rel:E2}");
        Assert.IsTrue(rel <= 1e-5f, $"relative error {rel}");
        Assert.IsTrue(LoraTestSupport.RelativeError(viaOrt, OrtRunner.Run(basePath)) > 1e-3f, "the adapter did not change the logits");
    }
}
