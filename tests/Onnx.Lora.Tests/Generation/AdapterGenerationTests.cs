using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Tests.Generation;

/// <summary>
/// One LoRA (B ≠ 0) on the KV-cache stories260K, served two independent ways: merged into the weights by our merger,
/// and as an .onnx_adapter that ONNX Runtime's own adapter API binds to the slots of base-with-slots.onnx.
/// </summary>
[TestClass]
public sealed class AdapterGenerationTests
{
    private static readonly GenerationOptions s_greedy = new() { MaxNewTokens = 48 };
    private static TempDir? s_dir;
    private static ServingExportReport? s_serving;

    private static string MergedPath => s_dir!.File("merged.onnx");

    private static string SlotsPath => s_serving!.ModelPath;

    private static string AdapterPath => s_serving!.AdapterPaths[ServingExport.DefaultAdapterName];

    [ClassInitialize]
    public static void Export(TestContext context)
    {
        s_dir = new TempDir();
        string loraPath = s_dir.File("lora.onnx");
        using (Model model = OnnxReader.Load(StoriesModels.KvCache))
        {
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "v_proj", "down_proj"] });
            var rng = new Random(20261125);
            foreach (LoraModuleInfo m in manifest.Modules)
            {
                model.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, 4], LoraTestModels.Rand((int)m.InFeatures * 4, rng, 0.3f)));
                model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [4, m.OutFeatures], LoraTestModels.Rand(4 * (int)m.OutFeatures, rng, 0.3f)));
            }

            OnnxWriter.Save(model, loraPath);
        }

        LoraMerger.Merge(loraPath, MergedPath);
        s_serving = ServingExport.Export(loraPath, new ServingExportOptions { OutputFolder = s_dir.File("serving") });
    }

    [ClassCleanup]
    public static void Cleanup() => s_dir?.Dispose();

    [TestMethod]
    public void Generate_AdapterThroughOrtVsMergedModel_SameGreedyTokensAndDifferentFromBase()
    {
        int[] prompt = StoriesModels.Prompt("One day, Mia went to the park");
        using TextGenerator merged = TextGenerator.Create(MergedPath);
        using TextGenerator viaAdapter = TextGenerator.Create(SlotsPath, [AdapterPath]);
        using TextGenerator baseModel = TextGenerator.Create(StoriesModels.KvCache);
        using TextGenerator emptySlots = TextGenerator.Create(SlotsPath);
        Assert.IsTrue(merged.HasKvCache && viaAdapter.HasKvCache, "merge and serving export keep the cache");

        int[] mergedTokens = [.. merged.Generate(prompt, s_greedy).NewTokens];
        int[] adapterTokens = [.. viaAdapter.Generate(prompt, s_greedy).NewTokens];
        int[] adapterRecomputed = [.. viaAdapter.Generate(prompt, s_greedy with { UseKvCache = false }).NewTokens];
        int[] baseTokens = [.. baseModel.Generate(prompt, s_greedy).NewTokens];
        int[] noAdapterTokens = [.. emptySlots.Generate(prompt, s_greedy).NewTokens];

        Assert.HasCount(s_greedy.MaxNewTokens, mergedTokens);
        CollectionAssert.AreEqual(mergedTokens, adapterTokens, "adapter through ORT vs merged");
        CollectionAssert.AreEqual(adapterTokens, adapterRecomputed, "adapter with KV cache vs recompute");
        CollectionAssert.AreNotEqual(baseTokens, adapterTokens, "the adapter must change the text");
        CollectionAssert.AreEqual(baseTokens, noAdapterTokens, "empty r = 0 slots add nothing");
    }

    [TestMethod]
    public void Create_AdapterOnModelWithoutSlots_ThrowsNamingAdapter()
    {
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => TextGenerator.Create(StoriesModels.KvCache, [AdapterPath]));
        StringAssert.Contains(e.Message, AdapterPath);
    }

    [TestMethod]
    public void Create_GarbageAdapterFile_ThrowsNamingFile()
    {
        string path = s_dir!.File("garbage.onnx_adapter");
        File.WriteAllBytes(path, [.. Enumerable.Range(0, 200).Select(i => (byte)(i * 7))]);

        var e = Assert.ThrowsExactly<AdapterFormatException>(() => TextGenerator.Create(SlotsPath, [path]));
        StringAssert.Contains(e.Message, path);
    }

    [TestMethod]
    public void Create_SameAdapterTwice_ThrowsSharedParameter()
    {
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => TextGenerator.Create(SlotsPath, [AdapterPath, AdapterPath]));
        StringAssert.Contains(e.Message, "both set");
    }
}
