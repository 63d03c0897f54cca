using Onnx.Lora.Ir;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Data;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Tests.Generation;

/// <summary>
/// <c>generate</c> on every decoder among ../shared/fixtures (made by ORT GenAI's model builder, ORT's transformers
/// optimizer, torch.onnx): whatever they declare (int32 ids, fp16 caches and logits, GQA, combined past_N, conv state),
/// greedy decoding with the KV cache equals decoding by recomputing the whole sequence per token.
/// </summary>
[TestClass]
public sealed class FixtureGenerationTests
{
    // fp16 caches round K/V to 11 significant bits, and the recompute path computes the same attention in other shapes:
    // logits of the random-weight fp16 fixtures agree to ~1e-3 of their range; fp32 ones to ~1e-5 (TextGeneratorTests).
    private const float Fp16LogitTolerance = 2e-2f;
    private const float Fp32LogitTolerance = 1e-4f;
    private const int NewTokens = 8;

    /// <summary>Every decoder fixture, with its declared peculiarity.</summary>
    public static IEnumerable<object[]> Decoders() =>
    [
        ["stories260K/reference-onnx/model.onnx", false],
        ["ortgenai-tiny-gqa/model.onnx", true],
        ["ortgenai-tiny-random-llama-fp16/model.onnx", true],
        ["ortgenai-tiny-random-llama-fp32/model.onnx", false],
        ["ortgenai-tiny-random-gpt2-fp32/past.onnx", false],
        ["ortgenai-tiny-random-lfm2/decoder.onnx", false],
        ["ortgenai-tiny-qwen35/decoder.onnx", true],
    ];

    // Fixture models that are not token-in decoders, and why.
    private static readonly Dictionary<string, string> s_notDecoders = new(StringComparer.Ordinal)
    {
        ["ortgenai-tiny-qwen35/embedding.onnx"] = "token embedding of a VLM",
        ["ortgenai-tiny-qwen35/text.onnx"] = "takes inputs_embeds",
        ["ortgenai-tiny-qwen35/vision.onnx"] = "vision encoder",
        ["stories260K/reference-onnx/model_named_weights.onnx"] = "same graph as model.onnx",
        ["stories260K/reference-onnx/external/model.onnx"] = "same graph as model.onnx",
    };

    [TestMethod]
    [DynamicData(nameof(Decoders))]
    public void Generate_FixtureDecoder_KvCacheEqualsRecompute(string relative, bool fp16)
    {
        using TextGenerator generator = TextGenerator.Create(Fixtures.Path(relative.Split('/')));
        int[] prompt = [1, 5, 9, 13];
        var options = new GenerationOptions { MaxNewTokens = NewTokens };
        var cachedLogits = new List<float[]>();
        GenerationResult cached = generator.Generate(prompt, options, eosId: null, (_, logits) => cachedLogits.Add(logits.ToArray()));
        var recomputedLogits = new List<float[]>();
        GenerationResult recomputed = generator.Generate(prompt, options with { UseKvCache = false }, eosId: null, (_, logits) => recomputedLogits.Add(logits.ToArray()));

        Assert.HasCount(NewTokens, cached.NewTokens);
        Assert.AreEqual(generator.HasKvCache, cached.UsedKvCache);
        Assert.IsTrue(cachedLogits.All(l => l.All(float.IsFinite)), "logits are finite");
        float maxDiff = cachedLogits.Zip(recomputedLogits).Max(p => OrtRunner.MaxAbsDiff(p.First, p.Second));
        float range = recomputedLogits.Max(l => l.Max() - l.Min());
        Assert.IsGreaterThan(0f, range, "the logits are not constant (the check is not vacuous)");
        Assert.IsLessThanOrEqualTo((fp16 ? Fp16LogitTolerance : Fp32LogitTolerance) * Math.Max(1f, range), maxDiff, $"{relative}: per-step logits, cache vs recompute (range {range})");
        CollectionAssert.AreEqual(recomputed.NewTokens.ToArray(), cached.NewTokens.ToArray(), $"{relative}: greedy tokens, cache vs recompute");
    }

    [TestMethod]
    public void Decoders_EveryFixtureModel_IsCoveredOrExplained()
    {
        var decoders = Decoders().Select(d => (string)d[0]).ToHashSet(StringComparer.Ordinal);
        foreach (object[] row in Fixtures.AllModels())
        {
            string relative = ((string)row[0]).Replace('\\', '/');
            Assert.IsTrue(decoders.Contains(relative) || s_notDecoders.ContainsKey(relative), $"fixture '{relative}' is neither tested as a decoder nor explained");
        }
    }

    [TestMethod]
    public void Create_InputsEmbedsModel_NamesTheInputItCannotFeed()
    {
        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => TextGenerator.Create(Fixtures.Path("ortgenai-tiny-qwen35", "text.onnx")));
        StringAssert.Contains(e.Message, "inputs_embeds");
    }

    [TestMethod]
    public void Generate_LlamaFp16WithTokenizerJson_TextHasNoRawMetaspace()
    {
        string folder = Fixtures.Path("ortgenai-tiny-random-llama-fp16");
        TextTokenizer tokenizer = TextTokenizer.Load(Path.Combine(folder, "tokenizer.json"));
        using TextGenerator generator = TextGenerator.Create(Path.Combine(folder, "model.onnx"));
        GenerationResult result = generator.Generate(tokenizer, "Hello world", new GenerationOptions { MaxNewTokens = 12 });

        Assert.HasCount(12, result.NewTokens);
        Assert.DoesNotContain('\u2581', result.Continuation, result.Continuation);
        Assert.IsFalse(result.Continuation.Contains("<0x", StringComparison.Ordinal), result.Continuation);
    }
}
