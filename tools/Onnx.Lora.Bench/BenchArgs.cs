namespace Onnx.Lora.Bench;

/// <summary>What every benchmark verb needs: its options, and the repository (models/default) wherever it runs from.</summary>
internal static class BenchArgs
{
    /// <summary>The value after <paramref name="name"/> in <paramref name="args"/>, or null when absent.</summary>
    public static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    /// <summary>The folder holding Onnx.Lora.sln, found upwards from the tool (or the tests).</summary>
    public static string RepoRoot()
    {
        for (string? d = AppContext.BaseDirectory; d is not null; d = Path.GetDirectoryName(d))
        {
            if (File.Exists(Path.Combine(d, "Onnx.Lora.sln")))
            {
                return d;
            }
        }

        throw new InvalidOperationException($"cannot find Onnx.Lora.sln above {AppContext.BaseDirectory}");
    }
}
