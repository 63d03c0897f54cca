// SVD of a matrix given as a product of thin factors, ΔW = A·B (A [m, R], B [R, n], R ≪ m, n), without forming ΔW:
//   A = Qa·Ra, Bᵀ = Qb·Rb (thin QR)  ⇒  ΔW = Qa·(Ra·Rbᵀ)·Qbᵀ = Qa·M·Qbᵀ,  M = U·S·Vᵀ (R×R, one-sided Jacobi)
//   ⇒  ΔW = (Qa·U)·S·(Qb·V)ᵀ, with Qa·U and Qb·V orthonormal.
// Cost O((m + n)·R² + R³) instead of O(m·n·R) for the dense delta, and exact to double rounding (no iteration count
// to tune, unlike a subspace iteration on the dense matrix).
namespace Onnx.Lora.Exporter.Combine;

/// <summary>Singular triplets of A·B: U [m, R] (orthonormal columns), S [R] descending, V [n, R]; ΔW = U·diag(S)·Vᵀ.</summary>
/// <param name="U">Left singular vectors, row-major [m, R].</param>
/// <param name="S">Singular values, descending.</param>
/// <param name="V">Right singular vectors, row-major [n, R].</param>
internal sealed record LowRankSvdResult(double[] U, double[] S, double[] V);

/// <summary>Exact SVD of a low-rank product A·B in double precision.</summary>
internal static class LowRankSvd
{
    public static LowRankSvdResult Compute(ReadOnlySpan<double> a, ReadOnlySpan<double> b, int m, int n, int r)
    {
        if (a.Length != (long)m * r || b.Length != (long)r * n)
        {
            throw new ArgumentException($"A has {a.Length} values and B {b.Length}; expected [{m},{r}] and [{r},{n}].");
        }

        double[] qa = a.ToArray();
        double[] ra = ThinQr(qa, m, r);
        double[] qb = Transpose(b, r, n); // Bᵀ [n, r]
        double[] rb = ThinQr(qb, n, r);

        // M = Ra·Rbᵀ [r, r].
        var mm = new double[r * r];
        for (int i = 0; i < r; i++)
        {
            for (int j = 0; j < r; j++)
            {
                double s = 0;
                for (int k = 0; k < r; k++)
                {
                    s += ra[(i * r) + k] * rb[(j * r) + k];
                }

                mm[(i * r) + j] = s;
            }
        }

        (double[] u, double[] sigma, double[] v) = JacobiSvd(mm, r);
        return new LowRankSvdResult(Multiply(qa, u, m, r, r), sigma, Multiply(qb, v, n, r, r));
    }

    /// <summary>In-place thin QR by modified Gram–Schmidt with one re-orthogonalization pass; returns R [r, r]. Dependent columns become zero in Q.</summary>
    private static double[] ThinQr(double[] q, int rows, int cols)
    {
        var rr = new double[cols * cols];
        double scale = 0;
        foreach (double x in q)
        {
            scale = Math.Max(scale, Math.Abs(x));
        }

        double tiny = scale * 1e-13 * Math.Sqrt(rows);
        for (int j = 0; j < cols; j++)
        {
            for (int pass = 0; pass < 2; pass++)
            {
                for (int k = 0; k < j; k++)
                {
                    double dot = 0;
                    for (int i = 0; i < rows; i++)
                    {
                        dot += q[(i * cols) + k] * q[(i * cols) + j];
                    }

                    rr[(k * cols) + j] += dot;
                    for (int i = 0; i < rows; i++)
                    {
                        q[(i * cols) + j] -= dot * q[(i * cols) + k];
                    }
                }
            }

            double norm = 0;
            for (int i = 0; i < rows; i++)
            {
                norm += q[(i * cols) + j] * q[(i * cols) + j];
            }

            norm = Math.Sqrt(norm);
            bool dependent = norm <= tiny;
            rr[(j * cols) + j] = dependent ? 0 : norm;
            for (int i = 0; i < rows; i++)
            {
                q[(i * cols) + j] = dependent ? 0 : q[(i * cols) + j] / norm;
            }
        }

        return rr;
    }

    /// <summary>One-sided Jacobi: rotates column pairs of a copy of M until orthogonal; σ_j = ‖column j‖. Sorted descending.</summary>
    private static (double[] U, double[] S, double[] V) JacobiSvd(double[] m, int n)
    {
        double[] w = (double[])m.Clone();
        var v = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            v[(i * n) + i] = 1;
        }

        for (int sweep = 0; sweep < 60; sweep++)
        {
            bool rotated = false;
            for (int p = 0; p < n - 1; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int i = 0; i < n; i++)
                    {
                        double wp = w[(i * n) + p], wq = w[(i * n) + q];
                        alpha += wp * wp;
                        beta += wq * wq;
                        gamma += wp * wq;
                    }

                    if (Math.Abs(gamma) <= 1e-15 * Math.Sqrt(alpha * beta) || gamma == 0)
                    {
                        continue;
                    }

                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.Sign(zeta == 0 ? 1 : zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + (zeta * zeta)));
                    double c = 1 / Math.Sqrt(1 + (t * t)), s = c * t;
                    Rotate(w, n, n, p, q, c, s);
                    Rotate(v, n, n, p, q, c, s);
                }
            }

            if (!rotated)
            {
                break;
            }
        }

        var sigma = new double[n];
        for (int j = 0; j < n; j++)
        {
            double norm = 0;
            for (int i = 0; i < n; i++)
            {
                norm += w[(i * n) + j] * w[(i * n) + j];
            }

            sigma[j] = Math.Sqrt(norm);
        }

        int[] order = Enumerable.Range(0, n).OrderByDescending(j => sigma[j]).ToArray();
        var u = new double[n * n];
        var vs = new double[n * n];
        var ss = new double[n];
        for (int k = 0; k < n; k++)
        {
            int j = order[k];
            ss[k] = sigma[j];
            for (int i = 0; i < n; i++)
            {
                u[(i * n) + k] = sigma[j] > 0 ? w[(i * n) + j] / sigma[j] : 0;
                vs[(i * n) + k] = v[(i * n) + j];
            }
        }

        return (u, ss, vs);
    }

    private static void Rotate(double[] x, int rows, int cols, int p, int q, double c, double s)
    {
        for (int i = 0; i < rows; i++)
        {
            double xp = x[(i * cols) + p], xq = x[(i * cols) + q];
            x[(i * cols) + p] = (c * xp) - (s * xq);
            x[(i * cols) + q] = (s * xp) + (c * xq);
        }
    }

    private static double[] Transpose(ReadOnlySpan<double> m, int rows, int cols)
    {
        var t = new double[m.Length];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                t[(j * rows) + i] = m[(i * cols) + j];
            }
        }

        return t;
    }

    private static double[] Multiply(double[] x, double[] y, int rows, int inner, int cols)
    {
        var z = new double[rows * cols];
        for (int i = 0; i < rows; i++)
        {
            for (int k = 0; k < inner; k++)
            {
                double xik = x[(i * inner) + k];
                if (xik == 0)
                {
                    continue;
                }

                for (int j = 0; j < cols; j++)
                {
                    z[(i * cols) + j] += xik * y[(k * cols) + j];
                }
            }
        }

        return z;
    }
}
