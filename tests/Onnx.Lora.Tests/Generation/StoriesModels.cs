using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Generation;

/// <summary>The default stories260K checkpoint converted once per test run, with and without a KV cache.</summary>
internal static class StoriesModels
{
    private static readonly Lazy<(TempDir Dir, string Kv, string Plain)> s_models = new(() =>
    {
        var dir = new TempDir();
        string checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        Llama2cConverter.ConvertToFile(checkpoint, dir.File("kv.onnx"));
        Llama2cConverter.ConvertToFile(checkpoint, dir.File("plain.onnx"), kvCache: false);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => dir.Dispose();
        return (dir, dir.File("kv.onnx"), dir.File("plain.onnx"));
    });

    private static readonly Lazy<TextTokenizer> s_tokenizer = new(() => TextTokenizer.Load(TokenizerPath));

    /// <summary>Converted with past_key_values / present (the converter's default).</summary>
    public static string KvCache => s_models.Value.Kv;

    /// <summary>Converted without a cache (the reference conversion's form).</summary>
    public static string Plain => s_models.Value.Plain;

    public static string TokenizerPath => Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    public static TextTokenizer Tokenizer => s_tokenizer.Value;

    /// <summary>BOS followed by the prompt's ids.</summary>
    public static int[] Prompt(string text) => [Tokenizer.BosId!.Value, .. Tokenizer.Encode(text)];
}
