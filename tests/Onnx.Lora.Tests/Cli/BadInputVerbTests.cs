using System.Buffers.Binary;
using Onnx.Lora.Bench.Fuzz;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>
/// Every verb that reads a user file: a hostile file gives the exit code of its kind (4 model, 5 adapter, 6 data), one
/// stderr line naming the file, no stack trace unless --verbose, and no output file.
/// </summary>
[TestClass]
public sealed class BadInputVerbTests
{
    private const int BadModel = 4, BadAdapter = 5, BadData = 6;
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    private static void AssertCleanFailure((int ExitCode, string Out, string Err) result, int exitCode, string fileName, string outputPath)
    {
        Assert.AreEqual(exitCode, result.ExitCode, result.Err + result.Out);
        StringAssert.Contains(result.Err, fileName);
        Assert.IsFalse(result.Err.Contains("   at ", StringComparison.Ordinal), result.Err);
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "one line: " + result.Err);
        Assert.IsFalse(File.Exists(outputPath) || (Directory.Exists(outputPath) && Directory.EnumerateFiles(outputPath, "*", SearchOption.AllDirectories).Any()), "partial output " + outputPath);
        string folder = Path.GetDirectoryName(outputPath)!;
        Assert.IsFalse(Directory.EnumerateFiles(folder, "*.tmp*", SearchOption.AllDirectories).Concat(Directory.EnumerateFiles(folder, "*.partial", SearchOption.AllDirectories)).Any(), "temporary files left behind");
    }

    /// <summary>A model file whose 'graph' field claims 2 GiB.</summary>
    private static string HostileModel(TempDir dir)
    {
        string path = dir.File("hostile.onnx");
        File.WriteAllBytes(path, [0x3A, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, .. new byte[64]]);
        return path;
    }

    /// <summary>A valid .onnx_adapter with its root offset pointing far past the end.</summary>
    private static string HostileAdapter(TempDir dir)
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        BinaryPrimitives.WriteInt32LittleEndian(bytes, 0x7FFFFFF0);
        string path = dir.File("hostile.onnx_adapter");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>A PEFT folder whose safetensors header has overlapping tensors.</summary>
    private static string HostilePeft(TempDir dir)
    {
        string folder = dir.File("peft");
        Directory.CreateDirectory(folder);
        FuzzSeeds.BuildSafetensors(folder);
        string path = Path.Combine(folder, PeftAdapter.WeightsFile);
        byte[] bytes = File.ReadAllBytes(path);
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        string header = System.Text.Encoding.UTF8.GetString(bytes, 8, headerLength);
        // Same length, overlapping range: the second tensor's offsets start inside the first.
        string hostile = header.Replace("\"data_offsets\":[0,", "\"data_offsets\":[4,", StringComparison.Ordinal);
        Assert.AreNotEqual(header, hostile);
        System.Text.Encoding.UTF8.GetBytes(hostile).CopyTo(bytes, 8);
        File.WriteAllBytes(path, bytes);
        return folder;
    }

    [TestMethod]
    [DataRow("inspect")]
    [DataRow("inject")]
    [DataRow("merge")]
    [DataRow("export-adapter")]
    [DataRow("generate")]
    public void Verb_HostileModel_ExitsBadModel(string verb)
    {
        using var dir = new TempDir();
        string model = HostileModel(dir), output = dir.File("out.onnx");
        string[] args = verb switch
        {
            "inspect" => [verb, model],
            "export-adapter" => [verb, model, "-o", output],
            "generate" => [verb, model, "--tokenizer", s_tokenizer, "--max-tokens", "2"],
            _ => [verb, model, "-o", output],
        };
        AssertCleanFailure(CliRunner.Run(args), BadModel, "hostile.onnx", output);
    }

    [TestMethod]
    [DataRow("merge")]
    [DataRow("convert-adapter")]
    [DataRow("combine")]
    public void Verb_HostileOnnxAdapter_ExitsBadAdapter(string verb)
    {
        using var dir = new TempDir();
        string adapter = HostileAdapter(dir), output = dir.File("out.onnx_adapter");
        string[] args = verb switch
        {
            "merge" => [verb, LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")), "--adapter", adapter, "-o", output],
            "combine" => [verb, adapter, adapter, "-o", output],
            _ => [verb, adapter, "-o", output],
        };
        AssertCleanFailure(CliRunner.Run(args), BadAdapter, "hostile.onnx_adapter", output);
    }

    [TestMethod]
    [DataRow("merge")]
    [DataRow("combine")]
    public void Verb_HostilePeftSafetensors_ExitsBadAdapter(string verb)
    {
        using var dir = new TempDir();
        string peft = HostilePeft(dir), output = dir.File("out.onnx_adapter");
        string[] args = verb == "merge"
            ? [verb, LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")), "--adapter", peft, "-o", output]
            : [verb, peft, peft, "-o", output];
        AssertCleanFailure(CliRunner.Run(args), BadAdapter, PeftAdapter.WeightsFile, output);
    }

    [TestMethod]
    public void Merge_HostileAdapterConfig_ExitsBadAdapterNamingConfig()
    {
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.File("peft"));
        FuzzSeeds.BuildSafetensors(dir.File("peft"));
        File.WriteAllText(Path.Combine(dir.File("peft"), PeftAdapter.ConfigFile), """{"r": 2, "lora_alpha": 4, "alpha_pattern": {"[": 1}}""");
        string output = dir.File("merged.onnx");
        AssertCleanFailure(CliRunner.Run("merge", LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx")), "--adapter", dir.File("peft"), "-o", output), BadAdapter, PeftAdapter.ConfigFile, output);
    }

    [TestMethod]
    public void Train_HostileTokenizer_ExitsBadDataWithoutOutput()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), """{"model": {"type": "BPE", "vocab": [1, 2]}}""");
        File.WriteAllLines(dir.File("d.jsonl"), ["{\"text\": \"Once upon a time.\"}"]);
        string run = dir.File("run");
        AssertCleanFailure(CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", dir.File("tokenizer.json"), "--data", dir.File("d.jsonl"), "--output-dir", run, "--max-steps", "1"),
            BadData, "tokenizer.json", run);
    }

    [TestMethod]
    public void Train_HostileData_ExitsBadDataWithoutOutput()
    {
        using var dir = new TempDir();
        File.WriteAllLines(dir.File("d.jsonl"), ["{\"text\": \"Once upon a time.\"}", "{\"text\": " + new string('[', 3000)]);
        string run = dir.File("run");
        AssertCleanFailure(CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", dir.File("d.jsonl"), "--output-dir", run, "--max-steps", "1"),
            BadData, "d.jsonl:2", run);
    }

    [TestMethod]
    public void Inject_HostileModelWithVerbose_PrintsStackTrace()
    {
        using var dir = new TempDir();
        (int code, _, string error) = CliRunner.Run("inject", HostileModel(dir), "-o", dir.File("out.onnx"), "--verbose");

        Assert.AreEqual(BadModel, code, error);
        StringAssert.Contains(error, "OnnxSerializationException");
        StringAssert.Contains(error, "   at ");
        Assert.IsFalse(File.Exists(dir.File("out.onnx")));
    }

    [TestMethod]
    public void ExitCodeFor_EachExceptionKind_MapsToItsDocumentedCode()
    {
        Assert.AreEqual(4, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Ir.OnnxSerializationException("x")));
        Assert.AreEqual(5, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Formats.AdapterFormatException("x")));
        Assert.AreEqual(5, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Formats.AdapterMismatchException("x")));
        Assert.AreEqual(6, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Data.DataException("x")));
        Assert.AreEqual(7, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Ir.ResourceLimitException("x")));
        Assert.AreEqual(3, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Trainer.Runner.TrainingGuardException("x")));
        Assert.AreEqual(2, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new LoraOptionsException("x")));
        Assert.AreEqual(2, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Data.ConfigException("x")));
        Assert.AreEqual(2, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new FileNotFoundException("x")));
    }
}
