using Onnx.Lora.Tests.Models;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Tests.Generation;

[TestClass]
public sealed class TextGeneratorTests
{
    // Incremental attention sums the same products as the full pass but in other MatMul shapes (MLAS blocks them
    // differently), so logits agree to float rounding, not bit for bit: observed max |diff| 1.6e-5 over 3 prompts x 64
    // steps, on logits spanning up to 37.
    private const float StepLogitTolerance = 5e-5f;

    // An empty past makes the KV graph compute the plain graph's ops on the same shapes: observed bit-identical.
    private const float FullSequenceTolerance = 1e-6f;

    private static readonly string[] s_prompts = ["", "One day, Mia went to the park", "The little dog was sad because"];

    private static readonly SamplingOptions s_sampled = new() { Temperature = 0.8f, TopK = 40, TopP = 0.9f, Seed = 20261125 };

    [TestMethod]
    public void Generate_KvCacheVsRecomputeGreedy_SameTokensAndStepLogits()
    {
        using TextGenerator kv = TextGenerator.Create(StoriesModels.KvCache);
        using TextGenerator plain = TextGenerator.Create(StoriesModels.Plain);
        Assert.IsTrue(kv.HasKvCache);
        Assert.IsFalse(plain.HasKvCache);
        float maxDiff = 0;
        float range = 0;
        foreach (string prompt in s_prompts)
        {
            var options = new GenerationOptions { MaxNewTokens = 64 };
            (GenerationResult cached, List<float[]> cachedLogits) = Run(kv, prompt, options);
            (GenerationResult recomputed, List<float[]> recomputedLogits) = Run(kv, prompt, options with { UseKvCache = false });
            (GenerationResult noCacheModel, List<float[]> noCacheLogits) = Run(plain, prompt, options);

            Assert.IsTrue(cached.UsedKvCache);
            Assert.IsFalse(recomputed.UsedKvCache);
            Assert.IsGreaterThanOrEqualTo(60, cached.NewTokens.Count, $"'{prompt}': too short to prove anything");
            CollectionAssert.AreEqual(recomputed.NewTokens.ToArray(), cached.NewTokens.ToArray(), $"'{prompt}': KV cache vs recompute");
            CollectionAssert.AreEqual(noCacheModel.NewTokens.ToArray(), cached.NewTokens.ToArray(), $"'{prompt}': KV cache vs the model without a cache");
            maxDiff = Math.Max(maxDiff, cachedLogits.Zip(noCacheLogits).Concat(cachedLogits.Zip(recomputedLogits)).Max(p => OrtRunner.MaxAbsDiff(p.First, p.Second)));
            range = Math.Max(range, noCacheLogits.Max(l => l.Max() - l.Min()));
        }

        Assert.IsLessThanOrEqualTo(StepLogitTolerance, maxDiff, $"per-step logits (spanning up to {range})");
    }

    [TestMethod]
    public void Generate_KvCacheVsRecomputeSampled_SameTokens()
    {
        using TextGenerator kv = TextGenerator.Create(StoriesModels.KvCache);
        using TextGenerator plain = TextGenerator.Create(StoriesModels.Plain);
        foreach (string prompt in s_prompts)
        {
            var options = new GenerationOptions { MaxNewTokens = 64, Sampling = s_sampled };
            (GenerationResult cached, List<float[]> cachedLogits) = Run(kv, prompt, options);
            (GenerationResult recomputed, List<float[]> recomputedLogits) = Run(plain, prompt, options);

            CollectionAssert.AreEqual(recomputed.NewTokens.ToArray(), cached.NewTokens.ToArray(), $"'{prompt}'");
            Assert.IsLessThanOrEqualTo(StepLogitTolerance, cachedLogits.Zip(recomputedLogits).Max(p => OrtRunner.MaxAbsDiff(p.First, p.Second)));
        }
    }

    [TestMethod]
    public void KvCacheModel_EmptyPast_SameLogitsAsModelWithoutCache()
    {
        using var kv = new ModelRunner(StoriesModels.KvCache);
        using var plain = new ModelRunner(StoriesModels.Plain);
        long[] ids = [1, 403, 407, 261, 378, 17, 300, 98, 410, 90, 2, 7, 511, 0, 256, 300];

        float[] expected = plain.Logits(ids, batch: 2);
        float[] actual = kv.Logits(ids, batch: 2);

        Assert.AreEqual(expected.Length, actual.Length);
        Assert.IsLessThanOrEqualTo(FullSequenceTolerance, OrtRunner.MaxAbsDiff(expected, actual));
        Assert.IsGreaterThan(1f, expected.Max() - expected.Min(), "logits must not be flat");
    }

    [TestMethod]
    public void Generate_DefaultModelGreedyFromBos_TellsTheKnownStory()
    {
        // The fixture README's known-good greedy output of stories260K (observed with llama2.c's run.c).
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        var streamed = new System.Text.StringBuilder();

        GenerationResult result = generator.Generate(StoriesModels.Tokenizer, "", new GenerationOptions { MaxNewTokens = 50 }, piece => streamed.Append(piece));

        StringAssert.StartsWith(result.Continuation, "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball", result.Continuation);
        Assert.AreEqual(result.Continuation, streamed.ToString(), "the streamed pieces add up to the text");
    }

    [TestMethod]
    public void Generate_Streaming_PiecesAddUpToDecodedTokensWithSpaces()
    {
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        var pieces = new List<string>();

        GenerationResult result = generator.Generate(StoriesModels.Tokenizer, "One day, Mia", new GenerationOptions { MaxNewTokens = 30 }, pieces.Add);

        string full = StoriesModels.Tokenizer.Decode([.. result.PromptTokens, .. result.NewTokens]);
        Assert.AreEqual("One day, Mia" + string.Concat(pieces), full);
        Assert.IsTrue(pieces.Count(p => p.StartsWith(' ')) >= 10, "word pieces keep their leading space: " + string.Join("|", pieces));
    }

    [TestMethod]
    public void Generate_SameSeed_SameTokensAndDifferentSeed_DifferentTokens()
    {
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        int[] prompt = StoriesModels.Prompt("Once upon a time");
        GenerationOptions Options(int seed) => new() { MaxNewTokens = 40, Sampling = new SamplingOptions { Temperature = 1f, Seed = seed } };

        int[] a = [.. generator.Generate(prompt, Options(1)).NewTokens];
        int[] b = [.. generator.Generate(prompt, Options(1)).NewTokens];
        int[] c = [.. generator.Generate(prompt, Options(2)).NewTokens];

        CollectionAssert.AreEqual(a, b);
        CollectionAssert.AreNotEqual(a, c);
    }

    [TestMethod]
    public void Generate_TopK1WithTemperature_EqualsGreedy()
    {
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        int[] prompt = StoriesModels.Prompt("The cat");

        int[] greedy = [.. generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 40 }).NewTokens];
        int[] topK1 = [.. generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 40, Sampling = new SamplingOptions { Temperature = 1.5f, TopK = 1, Seed = 3 } }).NewTokens];

        CollectionAssert.AreEqual(greedy, topK1);
    }

    [TestMethod]
    public void Generate_EosId_StopsBeforeEosAndReportsIt()
    {
        using TextGenerator generator = TextGenerator.Create(StoriesModels.KvCache);
        int[] prompt = StoriesModels.Prompt("");
        int[] greedy = [.. generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 }).NewTokens];

        // Declare the 6th greedy token the end of text: generation must stop right before it.
        GenerationResult result = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 }, eosId: greedy[5]);

        CollectionAssert.AreEqual(greedy[..greedy.AsSpan().IndexOf(greedy[5])], result.NewTokens.ToArray());
        Assert.IsTrue(result.EndedAtEos);
    }

    [TestMethod]
    public void Create_MissingModel_ThrowsNamingFile()
    {
        var e = Assert.ThrowsExactly<Onnx.Lora.Ir.OnnxSerializationException>(() => TextGenerator.Create("/nonexistent/model.onnx"));
        StringAssert.Contains(e.Message, "/nonexistent/model.onnx");
    }

    private static (GenerationResult Result, List<float[]> StepLogits) Run(TextGenerator generator, string prompt, GenerationOptions options)
    {
        var logits = new List<float[]>();
        GenerationResult result = generator.Generate(StoriesModels.Prompt(prompt), options, StoriesModels.Tokenizer.EosId, (_, l) => logits.Add(l.ToArray()));
        return (result, logits);
    }
}
