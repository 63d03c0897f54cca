using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>Broken model files give exit code 4 (BadModel) and one line naming the file, never a stack trace or partial output.</summary>
[TestClass]
public sealed class BadInputTests
{
    private static void AssertCleanFailure((int ExitCode, string Out, string Err) result, string fileName, string outDir, int exitCode = 4)
    {
        Assert.AreEqual(exitCode, result.ExitCode, result.Err);
        StringAssert.Contains(result.Err, fileName);
        Assert.IsFalse(result.Err.Contains("   at ", StringComparison.Ordinal), result.Err);
        Assert.IsFalse(result.Out.Contains("   at ", StringComparison.Ordinal));
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, "expected one line: " + result.Err);
        Assert.IsFalse(File.Exists(Path.Combine(outDir, "out.onnx")), "partial output");
    }

    public static IEnumerable<object[]> Verbs => [["inspect"], ["inject"]];

    private static (int, string, string) Run(string verb, string model, TempDir dir) =>
        verb == "inspect" ? CliRunner.Run("inspect", model) : CliRunner.Run("inject", model, "-o", dir.File("out.onnx"));

    [TestMethod]
    [DynamicData(nameof(Verbs))]
    public void Verb_GarbageBytes_FailsCleanly(string verb)
    {
        using var dir = new TempDir();
        string path = dir.File("garbage.onnx");
        File.WriteAllBytes(path, Enumerable.Range(0, 4096).Select(i => (byte)(i * 37 + 11)).ToArray());
        AssertCleanFailure(Run(verb, path, dir), "garbage.onnx", dir.Path);
    }

    [TestMethod]
    [DynamicData(nameof(Verbs))]
    public void Verb_TruncatedFile_FailsCleanly(string verb)
    {
        using var dir = new TempDir();
        string path = dir.File("truncated.onnx");
        byte[] bytes = File.ReadAllBytes(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        File.WriteAllBytes(path, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        AssertCleanFailure(Run(verb, path, dir), "truncated.onnx", dir.Path);
    }

    [TestMethod]
    [DynamicData(nameof(Verbs))]
    public void Verb_MissingExternalData_FailsCleanly(string verb)
    {
        using var dir = new TempDir();
        string path = dir.File("model.onnx");
        File.Copy(Fixtures.Path("stories260K", "reference-onnx", "external", "model.onnx"), path);
        var result = Run(verb, path, dir);
        AssertCleanFailure(result, "model.onnx", dir.Path);
    }

    [TestMethod]
    [DynamicData(nameof(Verbs))]
    public void Verb_MissingFile_FailsCleanly(string verb)
    {
        using var dir = new TempDir();
        // A path the user typed that does not exist is a command-line error (2), not a broken model (docs/exit-codes.md).
        AssertCleanFailure(Run(verb, dir.File("absent.onnx"), dir), "absent.onnx", dir.Path, exitCode: 2);
    }

    [TestMethod]
    [DataRow("inject", "--rank", "many")]
    [DataRow("inspect", "--no-such-option", "x")]
    public void Verb_MalformedCommandLine_ExitsWithInvalidInput(string verb, string option, string value)
    {
        (int code, string stdout, string stderr) = CliRunner.Run(verb, Fixtures.Path("stories260K", "reference-onnx", "model.onnx"), option, value);
        Assert.AreEqual(2, code, stderr);
        StringAssert.Contains(stderr, option == "--rank" ? "many" : option);
        Assert.AreEqual(string.Empty, stdout);
    }
}
