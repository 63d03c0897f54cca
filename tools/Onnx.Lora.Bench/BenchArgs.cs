namespace Onnx.Lora.Bench;

/// <summary>What every benchmark verb needs: its options (the repository comes from <see cref="Onnx.Lora.Tools.RepositoryRoot"/>).</summary>
internal static class BenchArgs
{
    /// <summary>The value after <paramref name="name"/> in <paramref name="args"/>, or null when absent.</summary>
    public static string? Option(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
