using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.IO;

/// <summary>
/// Inputs that lead out of the model's folder (a folder link) or never end (/dev/zero, a FIFO): refused at once, with
/// the exit code of their kind and one line naming the file, instead of being followed, read forever or waited on.
/// </summary>
[TestClass]
public sealed class InputSafetyTests
{
    private const int BadModel = 4, BadAdapter = 5, BadData = 6;
    private static readonly TimeSpan s_hang = TimeSpan.FromSeconds(60);
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    /// <summary>Runs the CLI in-process, failing (instead of hanging the suite) when it does not end.</summary>
    private static (int ExitCode, string Out, string Err) RunBounded(params string[] args)
    {
        var run = Task.Factory.StartNew(() => CliRunner.Run(args), TaskCreationOptions.LongRunning);
        Assert.IsTrue(run.Wait(s_hang), $"onnx-lora {string.Join(' ', args)} did not end within {s_hang.TotalSeconds} s");
        return run.Result;
    }

    private static void AssertRefused((int ExitCode, string Out, string Err) result, int exitCode, params string[] mentions)
    {
        Assert.AreEqual(exitCode, result.ExitCode, result.Err + result.Out);
        foreach (string m in mentions)
        {
            StringAssert.Contains(result.Err, m);
        }

        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "one line: " + result.Err);
    }

    /// <summary>m/model.onnx whose weights are at location 'sub/secret.data', with m/sub a link to '..' and the data outside m/.</summary>
    private static string ModelEscapingThroughFolderLink(TempDir dir)
    {
        string folder = dir.File("m");
        Directory.CreateDirectory(Path.Combine(folder, "sub"));
        string model = Path.Combine(folder, "model.onnx");
        using (Model m = LoraTestModels.Base())
        {
            OnnxWriter.Save(m, model, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0, DataFileName = "sub/secret.data" });
        }

        File.Move(Path.Combine(folder, "sub", "secret.data"), dir.File("secret.data"));
        Directory.Delete(Path.Combine(folder, "sub"));
        Directory.CreateSymbolicLink(Path.Combine(folder, "sub"), "..");
        return model;
    }

    [TestMethod]
    [DataRow("inspect")]
    [DataRow("merge")]
    [DataRow("inject")]
    [DataRow("export-adapter")]
    public void Verb_ExternalDataThroughFolderLinkOutsideModelFolder_ExitsBadModel(string verb)
    {
        using var dir = new TempDir();
        string model = ModelEscapingThroughFolderLink(dir);
        Assert.IsTrue(File.Exists(Path.Combine(dir.File("m"), "sub", "secret.data")), "the link does not lead out: the test would prove nothing");
        string output = dir.File("out.onnx");
        string[] args = verb switch
        {
            "inspect" => [verb, model],
            "merge" => [verb, model, "--adapter", Peft(dir), "-o", output],
            _ => [verb, model, "-o", output],
        };

        AssertRefused(RunBounded(args), BadModel, "model.onnx", "sub/secret.data", "outside the model's folder");
        Assert.IsFalse(File.Exists(output));
    }

    [TestMethod]
    public void Load_ExternalDataThroughFolderLinkInsideModelFolder_Loads()
    {
        using var dir = new TempDir();
        string folder = dir.File("m");
        Directory.CreateDirectory(Path.Combine(folder, "real"));
        string model = Path.Combine(folder, "model.onnx");
        using (Model m = LoraTestModels.Base())
        {
            OnnxWriter.Save(m, model, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0, DataFileName = "sub/w.data" });
        }

        // 'sub' becomes a link to a folder that is itself inside the model's folder: allowed.
        Directory.Move(Path.Combine(folder, "sub"), Path.Combine(folder, "real", "sub"));
        Directory.CreateSymbolicLink(Path.Combine(folder, "sub"), "real/sub");

        using Model loaded = OnnxReader.Load(model);
        Assert.HasCount(1, loaded.DataFiles);
    }

    [TestMethod]
    public void Inspect_ExternalDataIsAFifo_ExitsBadModelWithoutWaiting()
    {
        using var dir = new TempDir();
        string model = dir.File("model.onnx");
        using (Model m = LoraTestModels.Base())
        {
            OnnxWriter.Save(m, model, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 });
        }

        File.Delete(model + ".data");
        MakeFifo(model + ".data");

        AssertRefused(RunBounded("inspect", model), BadModel, "model.onnx.data", "FIFO", "model.onnx");
    }

    [TestMethod]
    public void Inspect_ModelIsAFifo_ExitsBadModelWithoutWaiting()
    {
        using var dir = new TempDir();
        MakeFifo(dir.File("model.onnx"));
        AssertRefused(RunBounded("inspect", dir.File("model.onnx")), BadModel, "model.onnx", "FIFO");
    }

    [TestMethod]
    public void Merge_OnnxAdapterIsDevZero_ExitsBadAdapterNamingIt()
    {
        using var dir = new TempDir();
        File.CreateSymbolicLink(dir.File("a.onnx_adapter"), "/dev/zero");
        string output = dir.File("out.onnx");
        AssertRefused(RunBounded("merge", LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")), "--adapter", dir.File("a.onnx_adapter"), "-o", output),
            BadAdapter, "a.onnx_adapter", "character device");
        Assert.IsFalse(File.Exists(output));
    }

    [TestMethod]
    public void Merge_AdapterConfigIsDevZero_ExitsBadAdapterNamingIt()
    {
        using var dir = new TempDir();
        string peft = Peft(dir);
        File.Delete(Path.Combine(peft, PeftAdapter.ConfigFile));
        File.CreateSymbolicLink(Path.Combine(peft, PeftAdapter.ConfigFile), "/dev/zero");
        AssertRefused(RunBounded("merge", LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")), "--adapter", peft, "-o", dir.File("out.onnx")),
            BadAdapter, PeftAdapter.ConfigFile, "character device");
    }

    [TestMethod]
    public void Train_TokenizerIsDevZero_ExitsBadDataNamingIt()
    {
        using var dir = new TempDir();
        File.CreateSymbolicLink(dir.File("tokenizer.json"), "/dev/zero");
        File.WriteAllLines(dir.File("d.jsonl"), ["{\"text\": \"Once upon a time.\"}"]);
        AssertRefused(RunBounded("train", "--model", s_checkpoint, "--tokenizer", dir.File("tokenizer.json"), "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--max-steps", "1"),
            BadData, "tokenizer.json", "character device");
    }

    [TestMethod]
    [DataRow("/dev/zero", "character device")]
    [DataRow("fifo", "FIFO")]
    public void Train_DataIsEndless_ExitsBadDataNamingIt(string source, string kind)
    {
        using var dir = new TempDir();
        string data = dir.File("d.jsonl");
        if (source == "fifo")
        {
            MakeFifo(data);
        }
        else
        {
            File.CreateSymbolicLink(data, source);
        }

        AssertRefused(RunBounded("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", data, "--output-dir", dir.File("run"), "--max-steps", "1"),
            BadData, "d.jsonl", kind);
    }

    private static string Peft(TempDir dir)
    {
        string peft = dir.File("P");
        if (!Directory.Exists(peft))
        {
            PeftAdapter.Export(LoraTestModels.RandomWeights(4, 8), peft);
        }

        return peft;
    }

    private static void MakeFifo(string path)
    {
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", [path]);
        mkfifo.WaitForExit();
        Assert.AreEqual(0, mkfifo.ExitCode, "mkfifo failed");
    }
}
