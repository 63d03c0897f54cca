using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Rewriter;
using Onnx.Lora.Rewriter.Injection;
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
}
