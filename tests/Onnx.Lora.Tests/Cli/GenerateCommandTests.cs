using System.Text.RegularExpressions;
using Onnx.Lora.Tests.Generation;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Tests.Cli;

[TestClass]
public sealed partial class GenerateCommandTests
{
    [TestMethod]
    public void Generate_TwoPrompts_OneStdoutLinePerPromptAndOneStatsLineEach()
    {
        string[] prompts = ["One day, Mia went to the park", "The cat"];

        (int code, string stdout, string stderr) = CliRunner.Run("generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--prompt", prompts[0], "--prompt", prompts[1], "--max-tokens", "60");

        Assert.AreEqual(0, code, stderr);
        string[] lines = stdout.Split('\n');
        Assert.HasCount(3, lines, stdout);
        Assert.AreEqual("", lines[2], "stdout ends with the last line's newline");
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        for (int i = 0; i < prompts.Length; i++)
        {
            string continuation = generator.Generate(StoriesModels.Tokenizer, prompts[i], new GenerationOptions { MaxNewTokens = 60 }).Continuation;
            Assert.AreEqual(prompts[i] + continuation.Replace("\n", "\\n", StringComparison.Ordinal), lines[i]);
        }

        string[] stats = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.HasCount(2, stats, stderr);
        Assert.IsTrue(stats.All(s => StatsLine().IsMatch(s)), stderr);
    }

    [TestMethod]
    public void Generate_NoKvCache_SameStdoutAsWithCache()
    {
        string[] args = ["generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--prompt", "Once upon a time", "--max-tokens", "60", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "7"];

        (int code, string cached, string cachedErr) = CliRunner.Run(args);
        (int code2, string recomputed, string recomputedErr) = CliRunner.Run([.. args, "--no-kv-cache"]);

        Assert.AreEqual(0, code, cachedErr);
        Assert.AreEqual(0, code2, recomputedErr);
        Assert.AreEqual(cached, recomputed);
        StringAssert.Contains(cachedErr, "(kv cache)");
        StringAssert.Contains(recomputedErr, "(recompute)");
    }

    [TestMethod]
    public void Generate_BadAdapterFile_OneErrorLineNamingFileAndNothingOnStdout()
    {
        using var dir = new TempDir();
        string adapter = dir.File("bad.onnx_adapter");
        File.WriteAllText(adapter, "not an adapter");

        (int code, string stdout, string stderr) = CliRunner.Run("generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--adapter", adapter, "--prompt", "Hi");

        Assert.AreNotEqual(0, code);
        Assert.AreEqual("", stdout);
        Assert.HasCount(1, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), stderr);
        StringAssert.Contains(stderr, adapter);
    }

    [TestMethod]
    public void Generate_TopPOutOfRange_OneErrorLine()
    {
        (int code, string stdout, string stderr) = CliRunner.Run("generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--top-p", "1.5");

        Assert.AreNotEqual(0, code);
        Assert.AreEqual("", stdout);
        Assert.HasCount(1, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), stderr);
        StringAssert.Contains(stderr, "Top-p");
    }

    [TestMethod]
    public void Generate_GpuProviderOnCpuRuntime_NamesTheGpuPackage()
    {
        // The test process runs the CPU package, so CUDA is absent here by construction (CI has no GPU either).
        (int code, string stdout, string stderr) = CliRunner.Run("generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--execution-provider", "cuda");

        Assert.AreEqual(8, code);
        Assert.AreEqual("", stdout);
        Assert.HasCount(1, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), stderr);
        StringAssert.Contains(stderr, "Microsoft.ML.OnnxRuntime.Gpu");
        StringAssert.Contains(stderr, "tools/onnx-lora --gpu");
    }

    [GeneratedRegex(@"^\d+ tokens, prefill \d+ tokens \d+\.\d ms, decode \d+\.\d tokens/s \(kv cache\)$")]
    private static partial Regex StatsLine();
}
