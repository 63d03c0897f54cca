using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.IO;

/// <summary>
/// An output that is an input under another name (itself, its data file, a link to it, a member of an input folder)
/// is refused before anything is written, by one check (device + inode) in every verb; the input keeps its bytes.
/// </summary>
[TestClass]
public sealed class OutputIsInputTests
{
    private const int InvalidInput = 2;
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");

    private static void AssertRefusedAndIntact((int ExitCode, string Out, string Err) result, string input, params string[] intact)
    {
        Assert.AreEqual(InvalidInput, result.ExitCode, result.Err + result.Out);
        StringAssert.Contains(result.Err, "Refusing to write");
        StringAssert.Contains(result.Err, Path.GetFileName(input));
        Assert.IsFalse(result.Err.Contains(".tmp", StringComparison.Ordinal), "the message names a temporary file: " + result.Err);
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "one line: " + result.Err);
        foreach (string path in intact)
        {
            Assert.IsTrue(File.Exists(path), path + " was removed");
        }
    }

    private static Dictionary<string, string> Hashes(params string[] paths) =>
        paths.ToDictionary(p => p, p => Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(p))));

    private static string LoraModel(TempDir dir) =>
        LoraTestModels.Save(LoraTestModels.WithLora(LoraTestModels.Base(), LoraTestModels.RandomWeights(4, 8), LoraPlacement.Initializers), dir.File("l.onnx"));

    /// <summary>The stand-in base with its weights in m.onnx.data, and a PEFT folder that fits it.</summary>
    private static (string Model, string Data, string Peft) BaseWithExternalData(TempDir dir)
    {
        string model = dir.File("m.onnx");
        using (Model m = LoraTestModels.Base())
        {
            OnnxWriter.Save(m, model, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 });
        }

        using Model lora = LoraTestModels.Base();
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8 });
        PeftAdapter.Export(LoraWeights.FromModel(lora, manifest, "lora"), dir.File("P"));
        return (model, model + ".data", dir.File("P"));
    }

    [TestMethod]
    public void ExportAdapter_OutputIsTheInputModel_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string lora = LoraModel(dir);
        var before = Hashes(lora);

        AssertRefusedAndIntact(CliRunner.Run("export-adapter", lora, "-o", lora), lora, lora);

        CollectionAssert.AreEqual(before, Hashes(lora));
    }

    [TestMethod]
    public void Merge_OutputIsTheInputsOwnDataFile_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        (string model, string data, string peft) = BaseWithExternalData(dir);
        // Control: the same merge to a fresh name works, so the refusal below is about the name alone.
        Assert.AreEqual(0, CliRunner.Run("merge", model, "--adapter", peft, "-o", dir.File("ok.onnx")).ExitCode);
        var before = Hashes(model, data);

        AssertRefusedAndIntact(CliRunner.Run("merge", model, "--adapter", peft, "-o", data), data, model, data);

        CollectionAssert.AreEqual(before, Hashes(model, data));
        using Model reloaded = OnnxReader.Load(model);
    }

    [TestMethod]
    public void Merge_OutputIsALinkToTheInput_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string lora = LoraModel(dir);
        string link = dir.File("link.onnx");
        File.CreateSymbolicLink(link, lora);
        var before = Hashes(lora);

        AssertRefusedAndIntact(CliRunner.Run("merge", lora, "-o", link), lora, lora);

        CollectionAssert.AreEqual(before, Hashes(lora));
        Assert.IsNotNull(new FileInfo(link).LinkTarget, "the link was replaced");
    }

    [TestMethod]
    public void Merge_OutputIsAHardLinkToTheInput_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string lora = LoraModel(dir);
        string hard = dir.File("hard.onnx");
        Assert.AreEqual(0, Link(lora, hard), "ln failed");
        var before = Hashes(lora);

        AssertRefusedAndIntact(CliRunner.Run("merge", lora, "-o", hard), lora, lora);

        CollectionAssert.AreEqual(before, Hashes(lora, hard).Where(kv => kv.Key == lora).ToDictionary());
    }

    [TestMethod]
    public void Merge_OutputIsAMemberOfTheAdapterFolder_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        (string model, _, string peft) = BaseWithExternalData(dir);
        string weights = Path.Combine(peft, PeftAdapter.WeightsFile), config = Path.Combine(peft, PeftAdapter.ConfigFile);
        var before = Hashes(weights, config);

        AssertRefusedAndIntact(CliRunner.Run("merge", model, "--adapter", peft, "-o", weights), weights, weights, config);

        CollectionAssert.AreEqual(before, Hashes(weights, config));
    }

    [TestMethod]
    public void ConvertLlama2c_OutputIsTheCheckpoint_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string checkpoint = dir.File("c.bin");
        File.Copy(s_checkpoint, checkpoint);
        var before = Hashes(checkpoint);

        AssertRefusedAndIntact(CliRunner.Run("convert-llama2c", checkpoint, "-o", checkpoint), checkpoint, checkpoint);

        CollectionAssert.AreEqual(before, Hashes(checkpoint));
    }

    [TestMethod]
    public void Combine_OutputIsAnInputAdapter_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string a = dir.File("a.onnx_adapter"), x = dir.File("x.onnx_adapter");
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(4, 8, seed: 1)), a);
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(2, 4, seed: 2)), x);
        var before = Hashes(a, x);

        AssertRefusedAndIntact(CliRunner.Run("combine", a, x, "-o", a), a, a, x);

        CollectionAssert.AreEqual(before, Hashes(a, x));
    }

    [TestMethod]
    public void ConvertAdapter_OutputIsTheInput_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        string a = dir.File("a.onnx_adapter");
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(4, 8, seed: 1)), a);
        var before = Hashes(a);

        AssertRefusedAndIntact(CliRunner.Run("convert-adapter", a, "-o", a), a, a);

        CollectionAssert.AreEqual(before, Hashes(a));
    }

    [TestMethod]
    public void Inject_OutputIsTheBaseModel_RefusesAndKeepsIt()
    {
        using var dir = new TempDir();
        (string model, string data, _) = BaseWithExternalData(dir);
        var before = Hashes(model, data);

        AssertRefusedAndIntact(CliRunner.Run("inject", model, "-o", data), data, model, data);

        CollectionAssert.AreEqual(before, Hashes(model, data));
    }

    private static int Link(string existing, string name)
    {
        using var ln = System.Diagnostics.Process.Start("ln", [existing, name]);
        ln.WaitForExit();
        return ln.ExitCode;
    }
}
