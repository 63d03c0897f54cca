using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Generation;

/// <summary>
/// `generate` refuses up front what ONNX Runtime would run into garbage or a raw error (issue 15 item 9): a NaN
/// adapter (printed nothing, exit 0; merge refused the same file) and a tokenizer larger than the model's vocabulary
/// (ORT's Gather index error mid-generation).
/// </summary>
[TestClass]
public sealed class GenerateRefusalTests
{
    private static TempDir? s_dir;
    private static ServingExportReport? s_serving;

    [ClassInitialize]
    public static void Export(TestContext context)
    {
        s_dir = new TempDir();
        string loraPath = s_dir.File("lora.onnx");
        using (Model model = OnnxReader.Load(StoriesModels.KvCache))
        {
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 2, Alpha = 4, Targets = ["q_proj"] });
            var rng = new Random(15);
            foreach (LoraModuleInfo m in manifest.Modules)
            {
                model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [2, m.OutFeatures], LoraTestModels.Rand(2 * (int)m.OutFeatures, rng, 0.3f)));
            }

            OnnxWriter.Save(model, loraPath);
        }

        s_serving = ServingExport.Export(loraPath, new ServingExportOptions { OutputFolder = s_dir.File("serving") });
    }

    [ClassCleanup]
    public static void Cleanup() => s_dir?.Dispose();

    private static string Adapter => s_serving!.AdapterPaths[ServingExport.DefaultAdapterName];

    [TestMethod]
    public void Generate_FiniteAdapter_Succeeds()
    {
        var result = CliRunner.Run("generate", s_serving!.ModelPath, "-t", StoriesModels.TokenizerPath, "--adapter", Adapter, "-p", "Once", "-n", "3");
        Assert.AreEqual(0, result.ExitCode, result.Err);
        Assert.IsGreaterThan(4, result.Out.Trim().Length, "some text was generated: " + result.Out);
    }

    [TestMethod]
    public void Generate_NaNAdapter_ExitsBadAdapterBeforePrinting()
    {
        AdapterFile file = OnnxAdapterFormat.Read(Adapter);
        AdapterParameter p = file.Parameters[0];
        float[] values = p.ToFloat32();
        values[1] = float.NaN;
        string nan = s_dir!.File("nan.onnx_adapter");
        OnnxAdapterFormat.Write(file with { Parameters = [AdapterParameter.FromFloats(p.Name, p.Dims, values), .. file.Parameters.Skip(1)] }, nan);

        var result = CliRunner.Run("generate", s_serving!.ModelPath, "-t", StoriesModels.TokenizerPath, "--adapter", nan, "-p", "Once", "-n", "3");

        Assert.AreEqual(5, result.ExitCode, result.Err + result.Out);
        StringAssert.Contains(result.Err, "nan.onnx_adapter");
        StringAssert.Contains(result.Err, p.Name);
        Assert.AreEqual(string.Empty, result.Out);
    }

    [TestMethod]
    public void Generate_TokenizerLargerThanVocabulary_ExitsBadDataBeforePrinting()
    {
        // The stories model has 512 tokens; a byte-level BPE tokenizer with 600 ids does not belong to it.
        var vocab = new JsonObject();
        for (int i = 0; i < 600; i++)
        {
            vocab[i < 256 ? $"<0x{i:X2}>" : $"t{i}"] = i;
        }

        var tokenizer = new JsonObject { ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray(), ["byte_fallback"] = true } };
        string path = s_dir!.File("big-tokenizer.json");
        File.WriteAllText(path, tokenizer.ToJsonString());

        var result = CliRunner.Run("generate", StoriesModels.Plain, "-t", path, "-p", "Once", "-n", "3");

        Assert.AreEqual(6, result.ExitCode, result.Err + result.Out);
        StringAssert.Contains(result.Err, "big-tokenizer.json");
        StringAssert.Contains(result.Err, "600");
        StringAssert.Contains(result.Err, "512");
        Assert.AreEqual(string.Empty, result.Out);
    }
}
