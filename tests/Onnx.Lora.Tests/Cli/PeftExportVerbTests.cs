using System.Text.Json.Nodes;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>inject's selection options reach the PEFT folder export-adapter writes, as PEFT's own fields.</summary>
[TestClass]
public sealed class PeftExportVerbTests
{
    [TestMethod]
    public void InjectThenExportAdapter_LayersExcludeRsLora_RecordedAsPeftFields()
    {
        using var dir = new TempDir();
        string basePath = Fixtures.Path("stories260K", "reference-onnx", "model.onnx");
        var inject = CliRunner.Run("inject", basePath, "-o", dir.File("lora.onnx"), "--targets", "q_proj,v_proj", "--layers", "0-1",
            "--exclude", "model.layers.1.self_attn.v_proj", "--rank", "4", "--alpha", "16", "--rslora", "--init", "Gaussian");
        Assert.AreEqual(0, inject.ExitCode, inject.Err);

        var export = CliRunner.Run("export-adapter", dir.File("lora.onnx"), "--peft", dir.File("peft"));
        Assert.AreEqual(0, export.ExitCode, export.Err);

        JsonObject json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("peft"), PeftAdapter.ConfigFile)))!.AsObject();
        Assert.AreEqual("[0,1]", json["layers_to_transform"]!.ToJsonString(), "without it PEFT adapts every layer");
        Assert.AreEqual("[\"model.layers.1.self_attn.v_proj\"]", json["exclude_modules"]!.ToJsonString());
        Assert.AreEqual(4, json["r"]!.GetValue<int>());
        Assert.AreEqual(16.0, json["lora_alpha"]!.GetValue<double>());
        Assert.IsTrue(json["use_rslora"]!.GetValue<bool>());
        Assert.AreEqual("gaussian", json["init_lora_weights"]!.GetValue<string>());
        string baseModel = json["base_model_name_or_path"]!.GetValue<string>();
        Assert.AreEqual(Path.GetDirectoryName(Path.GetFullPath(basePath)), baseModel, "the folder of the model inject adapted: it holds the HF config.json");

        var named = CliRunner.Run("export-adapter", dir.File("lora.onnx"), "--peft", dir.File("peft2"), "--base-model", "karpathy/stories260K");
        Assert.AreEqual(0, named.ExitCode, named.Err);
        Assert.AreEqual("karpathy/stories260K", JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("peft2"), PeftAdapter.ConfigFile)))!["base_model_name_or_path"]!.GetValue<string>());
    }
}
