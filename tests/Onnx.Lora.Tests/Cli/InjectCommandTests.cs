using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

[TestClass]
public sealed class InjectCommandTests
{
    private static string Stories => Fixtures.Path("stories260K", "reference-onnx", "model.onnx");

    [TestMethod]
    public void Inject_Stories_PrintsPeftSummaryAndWritesManifest()
    {
        using var dir = new TempDir();
        string output = dir.File("lora.onnx");
        (int code, string stdout, string stderr) = CliRunner.Run("inject", Stories, "-o", output, "-r", "4", "--alpha", "8", "--targets", "q_proj,v_proj");
        Assert.AreEqual(0, code, stderr);

        // PEFT: trainable = Σ r·(in + out) = 5 layers × (4·(64+64) + 4·(64+32)); all = base floats + trainable.
        long trainable = 5 * (4 * (64 + 64) + 4 * (64 + 32));
        using Model baseModel = OnnxReader.Load(Stories);
        long baseParams = baseModel.Graph.Initializers.Values.Where(v => v.Initializer!.DataType == DataType.Float).Sum(v => v.Initializer!.ElementCount);
        long all = baseParams + trainable;
        StringAssert.Contains(stdout, $"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {100.0 * trainable / all:F4}");
        StringAssert.Contains(stdout, "model.layers.4.self_attn.v_proj");

        using Model lora = OnnxReader.Load(output);
        LoraManifest manifest = LoraManifest.Read(lora)!;
        Assert.AreEqual(10, manifest.Modules.Count);
        Assert.IsTrue(manifest.Modules.All(m => m.Rank == 4 && m.Scaling == 2));
    }

    [TestMethod]
    public void Inject_DryRun_ListsModulesAndWritesNothing()
    {
        using var dir = new TempDir();
        string output = dir.File("lora.onnx");
        (int code, string stdout, _) = CliRunner.Run("inject", Stories, "-o", output, "--dry-run", "--target-regex", @".*\.layers\.1\.mlp\..*");
        Assert.AreEqual(0, code);
        StringAssert.Contains(stdout, "would adapt 3 modules");
        StringAssert.Contains(stdout, "model.layers.1.mlp.gate_proj");
        Assert.IsFalse(File.Exists(output));
    }

    [TestMethod]
    [DataRow("--targets", "wq", "wq")]
    [DataRow("-r", "0", "Rank must be > 0")]
    [DataRow("--rank-pattern", "c_attn=4", "c_attn")]
    [DataRow("--layers", "9", "matches no linear layer")]
    public void Inject_BadOption_ExitsWithInvalidInputAndNoOutput(string option, string value, string expected)
    {
        using var dir = new TempDir();
        string output = dir.File("lora.onnx");
        (int code, string stdout, string stderr) = CliRunner.Run("inject", Stories, "-o", output, option, value);
        Assert.AreEqual(2, code);
        StringAssert.Contains(stderr, expected);
        Assert.IsFalse(stderr.Contains("   at ", StringComparison.Ordinal), stderr);
        Assert.AreEqual(string.Empty, stdout);
        Assert.IsFalse(File.Exists(output));
        Assert.AreEqual(0, Directory.GetFiles(dir.Path).Length, "a partial file was left behind");
    }
}
