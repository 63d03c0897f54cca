namespace Onnx.Lora.Tests.Support;

/// <summary>Seeded test data: the one home of the tests' random arrays.</summary>
internal static class TestArrays
{
    /// <summary><paramref name="count"/> values uniform in [-scale, scale] from <paramref name="rng"/> (advances it).</summary>
    public static float[] Uniform(int count, Random rng, float scale = 1f) =>
        Enumerable.Range(0, count).Select(_ => (float)(((rng.NextDouble() * 2) - 1) * scale)).ToArray();

    /// <summary><paramref name="count"/> values uniform in [-scale, scale] from a generator seeded with <paramref name="seed"/>.</summary>
    public static float[] Uniform(int count, int seed, float scale = 1f) => Uniform(count, new Random(seed), scale);
}
