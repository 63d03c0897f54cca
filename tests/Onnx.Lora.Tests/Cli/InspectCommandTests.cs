using System.Text.Json;
using Onnx.Lora.Tests.Rewriter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

[TestClass]
public sealed class InspectCommandTests
{
    public static IEnumerable<object[]> FixtureModels => Fixtures.AllModels();

    [TestMethod]
    [DynamicData(nameof(FixtureModels))]
    public void Inspect_FixtureJson_ListsEveryLinearLayerWithFeatures(string relativePath)
    {
        (int code, string stdout, string stderr) = CliRunner.Run("inspect", Fixtures.Path(relativePath), "--json");
        Assert.AreEqual(0, code, stderr);
        using JsonDocument doc = JsonDocument.Parse(stdout);
        JsonElement root = doc.RootElement;
        Assert.IsTrue(root.GetProperty("parameters").GetInt64() >= 0);
        Assert.IsTrue(root.GetProperty("ops").EnumerateObject().Any() || relativePath.EndsWith("vision.onnx", StringComparison.Ordinal));
        JsonElement[] layers = root.GetProperty("linearLayers").EnumerateArray().ToArray();
        foreach (JsonElement layer in layers.Where(l => !l.GetProperty("outputHead").GetBoolean()))
        {
            string module = layer.GetProperty("module").GetString()!;
            Assert.AreEqual(ModuleNamingTests.LayerOf(module), layer.GetProperty("layer").GetInt32(), module);
            Assert.IsTrue(layer.GetProperty("inFeatures").GetInt64() > 0 && layer.GetProperty("outFeatures").GetInt64() > 0);
            StringAssert.Matches(layer.GetProperty("op").GetString(), new System.Text.RegularExpressions.Regex("^(MatMul|Gemm|MatMulNBits|Attention)$"));
        }
    }

    [TestMethod]
    public void Inspect_TorchLlamaText_ShowsAllSevenProjectionsOfEveryLayer()
    {
        (int code, string stdout, _) = CliRunner.Run("inspect", Fixtures.Path("stories260K", "reference-onnx", "external", "model.onnx"));
        Assert.AreEqual(0, code);
        foreach (int layer in Enumerable.Range(0, 5))
        {
            foreach (string proj in new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" })
            {
                StringAssert.Contains(stdout, $"model.layers.{layer}.{proj} ");
            }
        }

        StringAssert.Contains(stdout, "linear layers LoRA can target: 35 (+1 output head");
        StringAssert.Contains(stdout, "in external data");

        // stories260K: 260,032 weights + 4,096 RoPE floats in the checkpoint (README); the ONNX graph also holds the same tied table once more at most.
        StringAssert.Contains(stdout, "MatMul ");
    }

    [TestMethod]
    public void Inspect_QuantizedModel_ReportsMatMulNBitsAsQuantized()
    {
        using var dir = new TempDir();
        (Onnx.Lora.Ir.Model model, _) = NBitsGraph.Build();
        string path;
        using (model)
        {
            path = LoraTestSupport.Save(model, dir, "q4.onnx");
        }

        (int code, string stdout, _) = CliRunner.Run("inspect", path, "--json");
        Assert.AreEqual(0, code);
        using JsonDocument doc = JsonDocument.Parse(stdout);
        JsonElement layer = doc.RootElement.GetProperty("linearLayers")[0];
        Assert.AreEqual("MatMulNBits", layer.GetProperty("op").GetString());
        Assert.IsTrue(layer.GetProperty("quantized").GetBoolean());
        Assert.AreEqual(NBitsGraph.K, layer.GetProperty("inFeatures").GetInt32());
        Assert.AreEqual(NBitsGraph.N, layer.GetProperty("outFeatures").GetInt32());

        // K·N logical int4 weights plus the N·blocks scales.
        Assert.AreEqual(NBitsGraph.K * NBitsGraph.N + NBitsGraph.N * (NBitsGraph.K / NBitsGraph.BlockSize), doc.RootElement.GetProperty("parameters").GetInt64());
    }
}
