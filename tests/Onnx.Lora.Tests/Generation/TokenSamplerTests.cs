using System.Numerics.Tensors;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Tests.Generation;

[TestClass]
public sealed class TokenSamplerTests
{
    private const int Draws = 4000;

    [TestMethod]
    public void Next_TopP_PicksOnlyTokensOfTheNucleusAtTheirRenormalizedRates()
    {
        float[] logits = RandomLogits(64, seed: 20261125);
        const float Temperature = 0.7f;
        const float TopP = 0.6f;
        // The nucleus computed here in double: softmax(logits / T), most likely first, the fewest whose mass reaches P.
        double[] p = Softmax(logits, Temperature);
        int[] order = Enumerable.Range(0, p.Length).OrderByDescending(i => p[i]).ToArray();
        var nucleus = new List<int>();
        double mass = 0;
        foreach (int id in order)
        {
            nucleus.Add(id);
            mass += p[id];
            if (mass >= TopP)
            {
                break;
            }
        }

        Assert.IsTrue(nucleus.Count is > 2 and < 64, $"nucleus of {nucleus.Count} tokens does not test anything");
        var sampler = new TokenSampler(new SamplingOptions { Temperature = Temperature, TopP = TopP, Seed = 5 });
        var counts = new Dictionary<int, int>();
        for (int i = 0; i < Draws; i++)
        {
            int token = sampler.Next(logits);
            counts[token] = counts.GetValueOrDefault(token) + 1;
        }

        CollectionAssert.IsSubsetOf(counts.Keys.ToArray(), nucleus.ToArray(), "a token outside the nucleus was drawn");
        foreach (int id in nucleus)
        {
            // Binomial standard deviation at 4000 draws is ≤ 0.008; 0.03 is > 3.5 sigma.
            double expected = p[id] / mass;
            double observed = counts.GetValueOrDefault(id) / (double)Draws;
            Assert.AreEqual(expected, observed, 0.03, $"token {id}");
        }
    }

    [TestMethod]
    public void Next_TopK_PicksOnlyTheKMostLikely()
    {
        float[] logits = RandomLogits(100, seed: 3);
        int[] top = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).Take(5).ToArray();
        var sampler = new TokenSampler(new SamplingOptions { Temperature = 2f, TopK = 5, Seed = 9 });

        int[] drawn = Enumerable.Range(0, Draws).Select(_ => sampler.Next(logits)).Distinct().ToArray();

        CollectionAssert.AreEquivalent(top, drawn, "all five, and nothing else, at temperature 2");
    }

    [TestMethod]
    public void Next_TopKOfALargeVocabulary_PicksOnlyTheKMostLikelyAtTheirRenormalizedRates()
    {
        // 50,000 ids: the selection pass (not a full sort) must still find exactly the 8 best.
        float[] logits = RandomLogits(50_000, seed: 4);
        for (int i = 0; i < 8; i++)
        {
            logits[(i * 6151) + 17] = 6f + (i * 0.25f); // a clear top 8 spread over the vocabulary
        }

        int[] top = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).Take(8).ToArray();
        double[] weights = top.Select(i => Math.Exp(logits[i])).ToArray();
        var sampler = new TokenSampler(new SamplingOptions { Temperature = 1f, TopK = 8, Seed = 21 });
        var counts = new Dictionary<int, int>();

        for (int d = 0; d < Draws; d++)
        {
            int t = sampler.Next(logits);
            counts[t] = counts.GetValueOrDefault(t) + 1;
        }

        CollectionAssert.IsSubsetOf(counts.Keys.ToArray(), top, "only the 8 best ids are ever drawn");
        for (int i = 0; i < top.Length; i++)
        {
            Assert.AreEqual(weights[i] / weights.Sum(), counts.GetValueOrDefault(top[i]) / (double)Draws, 0.03, $"rate of id {top[i]}");
        }
    }

    [TestMethod]
    public void Next_TemperatureOnly_DrawsAtSoftmaxRates()
    {
        float[] logits = RandomLogits(16, seed: 5);
        const float temperature = 0.7f;
        double[] expected = logits.Select(l => Math.Exp(l / temperature)).ToArray();
        double z = expected.Sum();
        var sampler = new TokenSampler(new SamplingOptions { Temperature = temperature, Seed = 8 });
        var counts = new int[logits.Length];

        for (int d = 0; d < Draws; d++)
        {
            counts[sampler.Next(logits)]++;
        }

        for (int i = 0; i < logits.Length; i++)
        {
            Assert.AreEqual(expected[i] / z, counts[i] / (double)Draws, 0.03, $"rate of id {i}");
        }
    }

    [TestMethod]
    public void Next_TopK1_IsArgMax()
    {
        var sampler = new TokenSampler(new SamplingOptions { Temperature = 1f, TopK = 1, Seed = 1 });
        for (int seed = 0; seed < 50; seed++)
        {
            float[] logits = RandomLogits(512, seed);
            Assert.AreEqual(TensorPrimitives.IndexOfMax(logits), sampler.Next(logits));
        }
    }

    [TestMethod]
    public void Next_SameSeed_SameTokensAndDifferentSeed_DifferentTokens()
    {
        float[] logits = RandomLogits(512, seed: 4);
        int[] Draw(int seed)
        {
            var sampler = new TokenSampler(new SamplingOptions { Temperature = 1f, Seed = seed });
            return Enumerable.Range(0, 100).Select(_ => sampler.Next(logits)).ToArray();
        }

        CollectionAssert.AreEqual(Draw(11), Draw(11));
        CollectionAssert.AreNotEqual(Draw(11), Draw(12));
    }

    [TestMethod]
    [DataRow(-0.5f, 0, 1f)]
    [DataRow(float.NaN, 0, 1f)]
    [DataRow(1f, -1, 1f)]
    [DataRow(1f, 0, 0f)]
    [DataRow(1f, 0, 1.5f)]
    public void Create_OutOfRangeOptions_Throws(float temperature, int topK, float topP) =>
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new TokenSampler(new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP }));

    private static float[] RandomLogits(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
    }

    private static double[] Softmax(float[] logits, float temperature)
    {
        double max = logits.Max() / (double)temperature;
        double[] e = logits.Select(l => Math.Exp((l / (double)temperature) - max)).ToArray();
        double sum = e.Sum();
        return e.Select(x => x / sum).ToArray();
    }
}
