using System.Diagnostics;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>
/// Exit codes that misled (issue 15 item 9, issue 16): failed writes get their own code (74) and name the file the
/// user asked for, never a temporary; a missing input is a usage error (2); faults are blamed on the input at fault.
/// </summary>
[TestClass]
public sealed class ExitCodeFaultTests
{
    private const int InvalidInput = 2, BadModel = 4, BadData = 6, IoError = 74;
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    private static void AssertFails((int ExitCode, string Out, string Err) result, int exitCode, params string[] expected)
    {
        Assert.AreEqual(exitCode, result.ExitCode, result.Err + result.Out);
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "one line: " + result.Err);
        Assert.IsFalse(result.Err.Contains("   at ", StringComparison.Ordinal), result.Err);
        Assert.IsFalse(result.Err.Contains(".tmp", StringComparison.Ordinal), "names a temporary file: " + result.Err);
        foreach (string e in expected)
        {
            StringAssert.Contains(result.Err, e);
        }
    }

    /// <summary>An .onnx_adapter of about 1 MiB (one 1024→1024 module of rank 64), to fill a small disk.</summary>
    private static string LargeAdapter(TempDir dir)
    {
        var rng = new Random(3);
        var weights = new LoraWeights([new LoraModuleWeights("model.layers.0.mlp.up_proj", 1024, 1024, 64, LoraTestModels.Rand(1024 * 64, rng, 0.1f), LoraTestModels.Rand(64 * 1024, rng, 0.1f), 1f)]);
        string path = dir.File("large.onnx_adapter");
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(weights), path);
        return path;
    }

    private static bool TryMountTmpfs(string folder, string options)
    {
        Directory.CreateDirectory(folder);
        using Process? mount = Process.Start(new ProcessStartInfo("mount", ["-t", "tmpfs", "-o", options, "tmpfs", folder]) { RedirectStandardError = true });
        mount!.WaitForExit();
        return mount.ExitCode == 0;
    }

    private static void Unmount(string folder)
    {
        using Process? umount = Process.Start(new ProcessStartInfo("umount", [folder]) { RedirectStandardError = true });
        umount!.WaitForExit();
    }

    [TestMethod]
    [DataRow("merge")]
    [DataRow("export-adapter")]
    [DataRow("convert-adapter")]
    public void Write_OutputIsADirectory_ExitsIoErrorNamingIt(string verb)
    {
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), dir.File("peft"));
        string output = dir.File("out.onnx");
        Directory.CreateDirectory(output);
        var result = verb switch
        {
            "merge" => CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", output),
            // An adapter write (issue 15: exited 2 and named the temporary file).
            "export-adapter" => CliRunner.Run("export-adapter", InjectedModel(dir), "-o", output),
            _ => CliRunner.Run("convert-adapter", LargeAdapter(dir), "-o", output),
        };
        AssertFails(result, IoError, "out.onnx", "is a directory");
        Assert.IsEmpty(Directory.GetFileSystemEntries(output));
    }

    /// <summary>The stand-in base with LoRA injected (B = 0), as `inject` writes it.</summary>
    private static string InjectedModel(TempDir dir)
    {
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("inject-base.onnx"));
        var result = CliRunner.Run("inject", basePath, "-o", dir.File("lora.onnx"));
        Assert.AreEqual(0, result.ExitCode, result.Err);
        return dir.File("lora.onnx");
    }

    [TestMethod]
    public void Write_OutputUnderARegularFile_ExitsIoError()
    {
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), dir.File("peft"));
        AssertFails(CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("base.onnx/merged.onnx")), IoError, "base.onnx", "is a file, not a folder");
        AssertFails(CliRunner.Run("convert-adapter", LargeAdapter(dir), "-o", dir.File("base.onnx/a.onnx_adapter")), IoError, "is a file, not a folder");
    }

    [TestMethod]
    public void Write_ReadOnlyFolder_ExitsIoErrorNamingTheFinalFile()
    {
        using var dir = new TempDir();
        string adapter = LargeAdapter(dir);
        string folder = dir.File("ro");
        // A read-only mount where we may mount (root in a container), else a folder without write permission; as
        // root without mount rights, /proc (never writable) stands in.
        bool mounted = Environment.UserName == "root" && TryMountTmpfs(folder, "ro,size=1m");
        if (!mounted && Environment.UserName != "root" && !OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(folder);
            File.SetUnixFileMode(folder, UnixFileMode.UserRead | UnixFileMode.UserExecute);
        }
        else if (!mounted)
        {
            folder = "/proc/self";
        }

        try
        {
            string output = Path.Combine(folder, "a.onnx_adapter");
            AssertFails(CliRunner.Run("convert-adapter", adapter, "-o", output), IoError, "a.onnx_adapter");
            Assert.IsFalse(File.Exists(output));
        }
        finally
        {
            if (mounted)
            {
                Unmount(folder);
            }
        }
    }

    [TestMethod]
    public void Write_DiskFull_ExitsIoErrorWithTheReasonAndNoLeftovers()
    {
        using var dir = new TempDir();
        string adapter = LargeAdapter(dir);
        string folder = dir.File("small");
        if (!TryMountTmpfs(folder, "size=64k"))
        {
            // No mount rights: the same failure class through the process's file-size limit (EFBIG).
            Write_FileSizeLimit_ExitsIoError();
            return;
        }

        try
        {
            AssertFails(CliRunner.Run("convert-adapter", adapter, "-o", Path.Combine(folder, "a.onnx_adapter")), IoError, "a.onnx_adapter", "No space left on device");
            Assert.IsEmpty(Directory.GetFileSystemEntries(folder), "no partial or temporary file");
        }
        finally
        {
            Unmount(folder);
        }
    }

    [TestMethod]
    public void Write_FileSizeLimit_ExitsIoError()
    {
        // A real write failure in a child process: `ulimit -f` with SIGXFSZ ignored makes write() fail with EFBIG, which
        // .NET reports as an ArgumentOutOfRangeException (exit 70 before). W^X off: the runtime's double-mapped code
        // pages are files too and would hit the limit first.
        using var dir = new TempDir();
        string adapter = LargeAdapter(dir);
        string cli = Path.Combine(AppContext.BaseDirectory, "onnx-lora.dll");
        string output = dir.File("limited.onnx_adapter");
        var start = new ProcessStartInfo("bash", ["-c", "ulimit -f 256; trap '' XFSZ; exec dotnet \"$0\" convert-adapter \"$1\" -o \"$2\"", cli, adapter, output])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        start.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        using Process process = Process.Start(start)!;
        string error = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        AssertFails((process.ExitCode, "", error), IoError, "limited.onnx_adapter");
        Assert.IsFalse(File.Exists(output));
    }

    [TestMethod]
    public void ExitCodeFor_CheckpointSaveFailures_AreIoErrorsButMissingCheckpointsAreNot()
    {
        Assert.AreEqual(IoError, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Trainer.CheckpointException("x", new IOException("No space left on device"))));
        Assert.AreEqual(IoError, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Trainer.CheckpointException("x", new UnauthorizedAccessException("denied"))));
        Assert.AreEqual(InvalidInput, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Trainer.CheckpointException("x", new FileNotFoundException("gone"))));
        Assert.AreEqual(InvalidInput, Onnx.Lora.Cli.Commands.LoraCommand.ExitCodeFor(new Onnx.Lora.Trainer.CheckpointException("x")));
    }

    [TestMethod]
    public void Merge_OutputIsTheInput_ExitsInvalidInput()
    {
        // Issue 15: `merge X -o X` exited 5 (an adapter error).
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), dir.File("peft"));
        byte[] before = File.ReadAllBytes(basePath);
        AssertFails(CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", basePath), InvalidInput, "base.onnx");
        CollectionAssert.AreEqual(before, File.ReadAllBytes(basePath));
    }

    [TestMethod]
    public void Merge_NaNBaseWeight_BlamesTheModel()
    {
        // Issue 15: NaN base weights were blamed on the adapter (exit 5).
        using var dir = new TempDir();
        Model model = LoraTestModels.Base();
        float[] w = model.Graph.Initializers["qkv.weight"].Initializer!.ToFloat32();
        w[17] = float.NaN;
        model.Graph.Initializers.SetData("qkv.weight", InMemoryTensor.FromFloats("qkv.weight", [16, 48], w));
        string basePath = LoraTestModels.Save(model, dir.File("nanbase.onnx"));
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), dir.File("peft"));
        AssertFails(CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("m.onnx")), BadModel, "nanbase.onnx", "qkv.weight", "NaN");
        Assert.IsFalse(File.Exists(dir.File("m.onnx")));
    }

    [TestMethod]
    public void Merge_NaNAdapter_StillBlamesTheAdapter()
    {
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        LoraWeights weights = LoraTestModels.RandomWeightsForBase(2, 4);
        weights.Modules[0].B[3] = float.NaN;
        OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(weights), dir.File("nan.onnx_adapter"));
        AssertFails(CliRunner.Run("merge", basePath, "--adapter", dir.File("nan.onnx_adapter"), "-o", dir.File("m.onnx")), 5, "adapter is broken");
    }

    [TestMethod]
    [DataRow("inspect")]
    [DataRow("inject")]
    [DataRow("merge-model")]
    [DataRow("merge-adapter")]
    [DataRow("generate-tokenizer")]
    [DataRow("train-data")]
    [DataRow("train-tokenizer")]
    [DataRow("convert-llama2c")]
    public void Verb_MissingInputFile_ExitsInvalidInputNamingIt(string verb)
    {
        // Issue 16: a missing file exited 4 or 6 while the table says 2.
        using var dir = new TempDir();
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        File.WriteAllText(dir.File("d.jsonl"), "{\"text\": \"Once upon a time.\"}\n");
        string missing = dir.File("absent.file");
        string[] args = verb switch
        {
            "inspect" => ["inspect", missing],
            "inject" => ["inject", missing, "-o", dir.File("o.onnx")],
            "merge-model" => ["merge", missing, "--adapter", dir.File("d.jsonl"), "-o", dir.File("o.onnx")],
            "merge-adapter" => ["merge", basePath, "--adapter", missing, "-o", dir.File("o.onnx")],
            "generate-tokenizer" => ["generate", basePath, "--tokenizer", missing],
            "train-data" => ["train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", missing, "--output-dir", dir.File("run")],
            "train-tokenizer" => ["train", "--model", s_checkpoint, "--tokenizer", missing, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run")],
            _ => ["convert-llama2c", missing, "-o", dir.File("o.onnx")],
        };
        AssertFails(CliRunner.Run(args), InvalidInput, "absent.file", "does not exist");
        Assert.IsFalse(File.Exists(dir.File("o.onnx")) || Directory.Exists(dir.File("run")));
    }

    [TestMethod]
    public void Inspect_FolderWhereAModelFileIsExpected_ExitsInvalidInput()
    {
        // It said "Model file 'x' does not exist" with exit 4 (a folder exists; it is just not a model file).
        using var dir = new TempDir();
        Directory.CreateDirectory(dir.File("folder.onnx"));
        AssertFails(CliRunner.Run("inspect", dir.File("folder.onnx")), InvalidInput, "folder.onnx", "is a folder");
    }

    [TestMethod]
    public void Train_SeqLengthBeyondModel_ExitsInvalidInput()
    {
        // Issue 16: a too-long --seq-length exited 6 (bad data); it is an option value.
        using var dir = new TempDir();
        File.WriteAllText(dir.File("d.jsonl"), "{\"text\": \"Once upon a time.\"}\n");
        AssertFails(CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--seq-length", "100000", "--memory-limit", "none"),
            InvalidInput, "seq_length", "100000");
    }

    [TestMethod]
    public void Train_InvalidUtf8InJsonl_ExitsBadDataNamingTheLine()
    {
        // Issue 15: invalid UTF-8 was decoded to U+FFFD and trained on; docs say exit 6.
        using var dir = new TempDir();
        byte[] bad = [.. "{\"text\": \"Once upon a time.\"}\n{\"text\": \"caf"u8, 0xE9, .. "\"}\n"u8];
        File.WriteAllBytes(dir.File("d.jsonl"), bad);
        AssertFails(CliRunner.Run("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--max-steps", "1"),
            BadData, "d.jsonl:2", "UTF-8");
    }

    [TestMethod]
    public void Inject_IntegerAndStringMatMulWeights_AreNotTargets()
    {
        // Issue 15: inject on an int32 / string MatMul weight exited 70.
        using var dir = new TempDir();
        var b = new GraphBuilder("ints");
        Value x = b.Input("x", DataType.Float, "n", 4);
        Value xi = b.Input("xi", DataType.Int32, "n", 4);
        Value xs = b.Input("xs", DataType.String, "n", 4);
        Value wf = b.Initializer(InMemoryTensor.FromFloats("wf", [4, 4], new float[16]));
        Value wi = b.Initializer(InMemoryTensor.From<int>("wi", DataType.Int32, [4, 4], new int[16]));
        Value ws = b.Initializer(new StringTensor("ws", [4, 4], Enumerable.Repeat("a"u8.ToArray(), 16).ToList()));
        b.Output(b.MatMul(x, wf, name: "float_proj/MatMul"), "yf", DataType.Float, "n", 4);
        b.Output(b.MatMul(xi, wi, name: "int_proj/MatMul"), "yi", DataType.Int32, "n", 4);
        b.Output(b.MatMul(xs, ws, name: "string_proj/MatMul"), "ys", DataType.String, "n", 4);
        string path = LoraTestModels.Save(b.Model, dir.File("ints.onnx"));

        var result = CliRunner.Run("inject", path, "-o", dir.File("out.onnx"));

        Assert.AreEqual(0, result.ExitCode, result.Err);
        StringAssert.Contains(result.Out, "adapted 1 modules");
        Assert.IsFalse(result.Out.Contains("int_proj", StringComparison.Ordinal) || result.Out.Contains("string_proj", StringComparison.Ordinal), result.Out);
    }
}
