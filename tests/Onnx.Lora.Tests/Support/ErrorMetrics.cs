namespace Onnx.Lora.Tests.Support;

/// <summary>How far an output is from its reference: the one home of the tests' error measures.</summary>
internal static class ErrorMetrics
{
    /// <summary>max |a − b| over equal-length arrays; NaN when any difference is NaN (so a NaN output never passes).</summary>
    public static float MaxAbsDiff(float[] a, float[] b)
    {
        Assert.AreEqual(a.Length, b.Length, "output lengths differ");
        float max = 0;
        for (int i = 0; i < a.Length; i++)
        {
            float d = MathF.Abs(a[i] - b[i]);
            if (float.IsNaN(d))
            {
                return float.NaN;
            }

            max = MathF.Max(max, d);
        }

        return max;
    }

    /// <summary>The largest <see cref="MaxAbsDiff(float[], float[])"/> over outputs; both sides must have the same output names.</summary>
    public static float MaxAbsDiff(Dictionary<string, float[]> actual, Dictionary<string, float[]> expected)
    {
        CollectionAssert.AreEquivalent(expected.Keys.ToArray(), actual.Keys.ToArray());
        return expected.Max(kv => MaxAbsDiff(actual[kv.Key], kv.Value));
    }

    /// <summary>max |a − b| / max |b| per output, the worst over outputs (relative to each output's range).</summary>
    public static float RelativeError(Dictionary<string, float[]> actual, Dictionary<string, float[]> expected)
    {
        float worst = 0;
        foreach ((string name, float[] e) in expected)
        {
            float scale = e.Max(MathF.Abs);
            float diff = MaxAbsDiff(actual[name], e);
            worst = MathF.Max(worst, diff / MathF.Max(scale, 1e-12f));
        }

        return worst;
    }

    /// <summary>max |a − b| / max |b| in double: relative to the output's range, so near-zero entries do not blow it up.</summary>
    public static double MaxRelError(float[] actual, float[] expected)
    {
        Assert.AreEqual(expected.Length, actual.Length);
        double scale = expected.Max(v => Math.Abs((double)v));
        return actual.Zip(expected, (a, e) => Math.Abs((double)a - e)).Max() / scale;
    }
}
