namespace Onnx.Lora.Tests.Support;

/// <summary>Paths of the models in ../shared/fixtures (made by other tools).</summary>
internal static class Fixtures
{
    private static readonly Lazy<string> s_root = new(FindRoot);

    public static string Root => s_root.Value;

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root, .. parts]);

    /// <summary>Every .onnx model among the fixtures, relative to the fixtures folder.</summary>
    public static IEnumerable<object[]> AllModels() =>
        Directory.EnumerateFiles(Root, "*.onnx", SearchOption.AllDirectories)
            .Select(p => System.IO.Path.GetRelativePath(Root, p))
            .OrderBy(p => p, StringComparer.Ordinal)
            .Select(p => new object[] { p });

    /// <summary>Repository root (the folder holding Onnx.Lora.sln).</summary>
    public static string RepoRoot => Onnx.Lora.Tools.RepositoryRoot.Find();

    private static string FindRoot()
    {
        string? env = Environment.GetEnvironmentVariable("ONNX_LORA_FIXTURES");
        if (!string.IsNullOrEmpty(env))
        {
            return env;
        }

        string candidate = System.IO.Path.GetFullPath(System.IO.Path.Combine(RepoRoot, "..", "shared", "fixtures"));
        if (!Directory.Exists(candidate))
        {
            throw new InvalidOperationException($"Fixtures folder not found at '{candidate}' (set ONNX_LORA_FIXTURES).");
        }

        return candidate;
    }
}

/// <summary>A temporary folder deleted on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "onnx-lora-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
