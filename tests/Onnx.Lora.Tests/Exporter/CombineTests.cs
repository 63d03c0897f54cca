using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Combine;

namespace Onnx.Lora.Tests.Exporter;

[TestClass]
public sealed class CombineTests
{
    private const int In = 24, Out = 20;

    [TestMethod]
    public void Combine_Cat_EqualsWeightedSumOfDeltas()
    {
        var rng = new Random(20261125);
        LoraModuleWeights m1 = RandomModule("m", 3, 0.5f, rng), m2 = RandomModule("m", 5, 2f, rng);
        CombineResult result = AdapterCombiner.Combine([Adapter("a", m1, 0.7), Adapter("b", m2, -0.4)], CombinationType.Cat);

        LoraModuleWeights c = result.Weights.Modules.Single();
        Assert.AreEqual(8, c.Rank, "cat rank = Σ r_i");
        double[] expected = Add(Delta(m1, 0.7), Delta(m2, -0.4));
        Assert.IsLessThanOrEqualTo(1e-6, MaxRel(Delta(c, 1), expected), "cat = Σ w_i·s_i·A_i·B_i (float32 rounding only)");
    }

    [TestMethod]
    public void Combine_Linear_UsesSqrtWeightsOnAAndBAsPeftDoes()
    {
        var rng = new Random(5);
        LoraModuleWeights m1 = RandomModule("m", 4, 0.5f, rng), m2 = RandomModule("m", 4, 2f, rng);
        LoraModuleWeights c = AdapterCombiner.Combine([Adapter("a", m1, 0.3), Adapter("b", m2, 0.6)], CombinationType.Linear).Weights.Modules.Single();

        // PEFT: A = Σ √(w_i·s_i)·A_i, B = Σ √(w_i·s_i)·B_i, scale 1.
        double r1 = Math.Sqrt(0.3 * 0.5), r2 = Math.Sqrt(0.6 * 2);
        for (int i = 0; i < c.A.Length; i++)
        {
            Assert.AreEqual((r1 * m1.A[i]) + (r2 * m2.A[i]), c.A[i], 1e-6);
        }

        for (int i = 0; i < c.B.Length; i++)
        {
            Assert.AreEqual((r1 * m1.B[i]) + (r2 * m2.B[i]), c.B[i], 1e-6);
        }

        // And it is NOT the weighted sum of the deltas: the cross terms remain.
        double[] sum = Add(Delta(m1, 0.3), Delta(m2, 0.6));
        Assert.IsGreaterThan(0.05, MaxRel(Delta(c, 1), sum));
    }

    [TestMethod]
    public void Combine_LinearWithDifferentRanks_ThrowsNamingModuleAndAdapters()
    {
        var rng = new Random(1);
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() =>
            AdapterCombiner.Combine([Adapter("first", RandomModule("q", 2, 1, rng), 1), Adapter("second", RandomModule("q", 3, 1, rng), 1)], CombinationType.Linear));
        StringAssert.Contains(e.Message, "'q'");
        StringAssert.Contains(e.Message, "second");
    }

    [TestMethod]
    public void Combine_SvdAtFullRank_IsExact()
    {
        var rng = new Random(9);
        LoraModuleWeights m1 = RandomModule("m", 3, 0.5f, rng), m2 = RandomModule("m", 4, 1.5f, rng);
        CombineResult result = AdapterCombiner.Combine([Adapter("a", m1, 1.0), Adapter("b", m2, 0.5)], CombinationType.Svd, svdRank: 7);

        LoraModuleWeights c = result.Weights.Modules.Single();
        Assert.AreEqual(7, c.Rank);
        Assert.IsLessThanOrEqualTo(1e-5, MaxRel(Delta(c, 1), Add(Delta(m1, 1.0), Delta(m2, 0.5))));
        Assert.AreEqual(0, result.Modules[0].DroppedFrobenius, 1e-9);
    }

    [TestMethod]
    public void Combine_SvdTruncated_ErrorEqualsDroppedSingularValues()
    {
        // Two adapters built from known orthonormal directions: Σ w_i·s_i·A_i·B_i = U·diag(σ)·Vᵀ with σ chosen here.
        double[] sigma = [5, 4, 3, 2, 1, 0.5];
        var rng = new Random(42);
        double[] u = Orthonormal(In, 6, rng), v = Orthonormal(Out, 6, rng);
        LoraModuleWeights m1 = FromSvd(u, v, sigma, [0, 2, 4], scale: 2f, weight: 0.5);
        LoraModuleWeights m2 = FromSvd(u, v, sigma, [1, 3, 5], scale: 1f, weight: 1.0);
        // Mix the directions inside each adapter so A_i, B_i are not already singular vectors.
        m1 = Mix(m1, rng);
        m2 = Mix(m2, rng);

        CombineResult result = AdapterCombiner.Combine([Adapter("a", m1, 0.5), Adapter("b", m2, 1.0)], CombinationType.Svd, svdRank: 3);

        LoraModuleWeights c = result.Weights.Modules.Single();
        double[] exact = Add(Delta(m1, 0.5), Delta(m2, 1.0));
        double[] approx = Delta(c, 1);
        double frob = Math.Sqrt(exact.Zip(approx, (x, y) => (x - y) * (x - y)).Sum());
        double droppedExpected = Math.Sqrt((2 * 2) + (1 * 1) + (0.5 * 0.5));
        Assert.AreEqual(droppedExpected, frob, 1e-4, "‖ΔW − ΔW_3‖_F = √(σ4² + σ5² + σ6²)");
        Assert.AreEqual(droppedExpected, result.Modules[0].DroppedFrobenius, 1e-5);
        for (int j = 0; j < sigma.Length; j++)
        {
            Assert.AreEqual(sigma[j], result.Modules[0].SingularValues[j], 1e-5, $"σ{j + 1} (inputs are float32)");
        }
    }

    [TestMethod]
    public void Combine_ModuleInOneAdapterOnly_KeepsItsWeightedDelta()
    {
        var rng = new Random(3);
        LoraModuleWeights q = RandomModule("q", 2, 1, rng), k = RandomModule("k", 2, 1, rng), q2 = RandomModule("q", 2, 1, rng);
        var a = new WeightedAdapter("a", new LoraWeights([q, k]), 0.25);
        var b = new WeightedAdapter("b", new LoraWeights([q2]), 1);
        LoraWeights c = AdapterCombiner.Combine([a, b], CombinationType.Cat).Weights;
        Assert.IsLessThanOrEqualTo(1e-6, MaxRel(Delta(c.Find("k")!, 1), Delta(k, 0.25)));
        Assert.AreEqual(4, c.Find("q")!.Rank);
    }

    private static WeightedAdapter Adapter(string name, LoraModuleWeights m, double weight) => new(name, new LoraWeights([m]), weight);

    private static LoraModuleWeights RandomModule(string name, int rank, float scale, Random rng) =>
        new(name, In, Out, rank, LoraTestModels.Rand(In * rank, rng, 1), LoraTestModels.Rand(rank * Out, rng, 1), scale);

    /// <summary>w·s·A·B computed in double, [in, out].</summary>
    private static double[] Delta(LoraModuleWeights m, double weight)
    {
        var d = new double[m.InFeatures * m.OutFeatures];
        for (int i = 0; i < m.InFeatures; i++)
        {
            for (int o = 0; o < m.OutFeatures; o++)
            {
                double s = 0;
                for (int k = 0; k < m.Rank; k++)
                {
                    s += (double)m.A[(i * m.Rank) + k] * m.B[(k * m.OutFeatures) + o];
                }

                d[(i * m.OutFeatures) + o] = weight * m.Scale * s;
            }
        }

        return d;
    }

    private static double[] Add(double[] x, double[] y) => x.Zip(y, (a, b) => a + b).ToArray();

    private static double MaxRel(double[] actual, double[] expected) =>
        actual.Zip(expected, (a, e) => Math.Abs(a - e)).Max() / expected.Max(Math.Abs);

    /// <summary>Random [rows, cols] matrix with orthonormal columns (Gram–Schmidt in the test, independent of the code under test).</summary>
    private static double[] Orthonormal(int rows, int cols, Random rng)
    {
        var q = new double[rows * cols];
        for (int j = 0; j < cols; j++)
        {
            double[] col = Enumerable.Range(0, rows).Select(_ => rng.NextDouble() - 0.5).ToArray();
            for (int k = 0; k < j; k++)
            {
                double dot = Enumerable.Range(0, rows).Sum(i => col[i] * q[(i * cols) + k]);
                for (int i = 0; i < rows; i++)
                {
                    col[i] -= dot * q[(i * cols) + k];
                }
            }

            double norm = Math.Sqrt(col.Sum(x => x * x));
            for (int i = 0; i < rows; i++)
            {
                q[(i * cols) + j] = col[i] / norm;
            }
        }

        return q;
    }

    /// <summary>A = U[:, idx]·diag(σ[idx]) / (w·scale), B = V[:, idx]ᵀ, so w·scale·A·B = Σ_idx σ·u·vᵀ.</summary>
    private static LoraModuleWeights FromSvd(double[] u, double[] v, double[] sigma, int[] idx, float scale, double weight)
    {
        int r = idx.Length, cols = sigma.Length;
        var a = new float[In * r];
        var b = new float[r * Out];
        for (int k = 0; k < r; k++)
        {
            for (int i = 0; i < In; i++)
            {
                a[(i * r) + k] = (float)(u[(i * cols) + idx[k]] * sigma[idx[k]] / (scale * weight));
            }

            for (int o = 0; o < Out; o++)
            {
                b[(k * Out) + o] = (float)v[(o * cols) + idx[k]];
            }
        }

        return new LoraModuleWeights("m", In, Out, r, a, b, scale);
    }

    /// <summary>A·G, G⁻¹·B for a random orthogonal 2-D rotation G of the first two rank directions (product unchanged).</summary>
    private static LoraModuleWeights Mix(LoraModuleWeights m, Random rng)
    {
        double t = rng.NextDouble() * Math.PI;
        double c = Math.Cos(t), s = Math.Sin(t);
        float[] a = (float[])m.A.Clone(), b = (float[])m.B.Clone();
        int r = m.Rank;
        for (int i = 0; i < In; i++)
        {
            double x = a[i * r], y = a[(i * r) + 1];
            a[i * r] = (float)((c * x) - (s * y));
            a[(i * r) + 1] = (float)((s * x) + (c * y));
        }

        for (int o = 0; o < Out; o++)
        {
            double x = b[o], y = b[Out + o];
            b[o] = (float)((c * x) - (s * y));
            b[Out + o] = (float)((s * x) + (c * y));
        }

        return m with { A = a, B = b };
    }
}
