using System.Numerics.Tensors;

namespace Onnx.Lora.Injection;

/// <summary>The top singular triplets of a matrix: W ≈ U·diag(S)·Vᵀ.</summary>
/// <param name="U">Left singular vectors, row-major [rows, k].</param>
/// <param name="S">Singular values, descending, [k].</param>
/// <param name="V">Right singular vectors, row-major [cols, k].</param>
public sealed record SvdResult(double[] U, double[] S, double[] V);

/// <summary>
/// Top-k singular value decomposition by orthogonal (subspace) iteration on the Gram matrix WᵀW with oversampling,
/// finished by a Rayleigh–Ritz step solved with cyclic Jacobi. Double precision; reads W once into a copy.
/// </summary>
public static class TruncatedSvd
{
    /// <summary>Computes the top <paramref name="k"/> singular triplets of <paramref name="w"/> [rows, cols].</summary>
    public static SvdResult Compute(ReadOnlySpan<float> w, int rows, int cols, int k, int seed = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(w.Length, rows * cols);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(k, Math.Min(rows, cols));
        var a = new double[rows * cols];
        for (int i = 0; i < a.Length; i++)
        {
            a[i] = w[i];
        }

        // Gram matrix G = WᵀW [cols, cols]: its eigenvectors are V, its eigenvalues S².
        var g = new double[cols * cols];
        for (int r = 0; r < rows; r++)
        {
            ReadOnlySpan<double> row = a.AsSpan(r * cols, cols);
            for (int i = 0; i < cols; i++)
            {
                double ri = row[i];
                if (ri != 0)
                {
                    TensorPrimitives.MultiplyAdd(row, ri, (ReadOnlySpan<double>)g.AsSpan(i * cols, cols), g.AsSpan(i * cols, cols));
                }
            }
        }

        int p = Math.Min(cols, k + 8);
        var q = new double[cols * p];
        var rng = new Random(seed);
        for (int i = 0; i < q.Length; i++)
        {
            q[i] = rng.NextDouble() - 0.5;
        }

        Orthonormalize(q, cols, p);
        var z = new double[cols * p];
        for (int iter = 0; iter < 200; iter++)
        {
            Multiply(g, cols, q, p, z);
            Orthonormalize(z, cols, p);
            (q, z) = (z, q);
        }

        // Rayleigh–Ritz: T = Qᵀ G Q, T = E Λ Eᵀ, V = Q E.
        Multiply(g, cols, q, p, z);
        var t = new double[p * p];
        for (int i = 0; i < p; i++)
        {
            for (int j = 0; j < p; j++)
            {
                double s = 0;
                for (int c = 0; c < cols; c++)
                {
                    s += q[c * p + i] * z[c * p + j];
                }

                t[i * p + j] = s;
            }
        }

        (double[] values, double[] vectors) = JacobiEigen(t, p);
        int[] order = Enumerable.Range(0, p).OrderByDescending(i => values[i]).Take(k).ToArray();
        var v = new double[cols * k];
        var sv = new double[k];
        for (int j = 0; j < k; j++)
        {
            int e = order[j];
            sv[j] = Math.Sqrt(Math.Max(0, values[e]));
            for (int c = 0; c < cols; c++)
            {
                double s = 0;
                for (int l = 0; l < p; l++)
                {
                    s += q[c * p + l] * vectors[l * p + e];
                }

                v[c * k + j] = s;
            }
        }

        // U = W V / S.
        var u = new double[rows * k];
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < k; j++)
            {
                double s = 0;
                for (int c = 0; c < cols; c++)
                {
                    s += a[r * cols + c] * v[c * k + j];
                }

                u[r * k + j] = sv[j] > 0 ? s / sv[j] : 0;
            }
        }

        return new SvdResult(u, sv, v);
    }

    private static void Multiply(double[] g, int n, double[] q, int p, double[] destination)
    {
        Array.Clear(destination);
        for (int i = 0; i < n; i++)
        {
            Span<double> dst = destination.AsSpan(i * p, p);
            for (int c = 0; c < n; c++)
            {
                double gic = g[i * n + c];
                if (gic != 0)
                {
                    TensorPrimitives.MultiplyAdd(q.AsSpan(c * p, p), gic, (ReadOnlySpan<double>)dst, dst);
                }
            }
        }
    }

    // Modified Gram–Schmidt on the columns of m [n, p], done twice for stability.
    private static void Orthonormalize(double[] m, int n, int p)
    {
        for (int pass = 0; pass < 2; pass++)
        {
            for (int j = 0; j < p; j++)
            {
                for (int l = 0; l < j; l++)
                {
                    double dot = 0;
                    for (int i = 0; i < n; i++)
                    {
                        dot += m[i * p + j] * m[i * p + l];
                    }

                    for (int i = 0; i < n; i++)
                    {
                        m[i * p + j] -= dot * m[i * p + l];
                    }
                }

                double norm = 0;
                for (int i = 0; i < n; i++)
                {
                    norm += m[i * p + j] * m[i * p + j];
                }

                norm = Math.Sqrt(norm);
                for (int i = 0; i < n; i++)
                {
                    m[i * p + j] = norm > 1e-300 ? m[i * p + j] / norm : 0;
                }
            }
        }
    }

    // Cyclic Jacobi eigenvalue algorithm for a small symmetric matrix; returns eigenvalues and column eigenvectors.
    private static (double[] Values, double[] Vectors) JacobiEigen(double[] matrix, int n)
    {
        var a = (double[])matrix.Clone();
        var e = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            e[i * n + i] = 1;
        }

        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int i = 0; i < n; i++)
            {
                for (int j = i + 1; j < n; j++)
                {
                    off += a[i * n + j] * a[i * n + j];
                }
            }

            if (off < 1e-30)
            {
                break;
            }

            for (int pi = 0; pi < n; pi++)
            {
                for (int qi = pi + 1; qi < n; qi++)
                {
                    double apq = a[pi * n + qi];
                    if (Math.Abs(apq) < 1e-300)
                    {
                        continue;
                    }

                    double theta = (a[qi * n + qi] - a[pi * n + pi]) / (2 * apq);
                    double t = Math.Sign(theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    if (theta == 0)
                    {
                        t = 1;
                    }

                    double c = 1 / Math.Sqrt(t * t + 1);
                    double s = t * c;
                    for (int k = 0; k < n; k++)
                    {
                        double akp = a[k * n + pi];
                        double akq = a[k * n + qi];
                        a[k * n + pi] = c * akp - s * akq;
                        a[k * n + qi] = s * akp + c * akq;
                    }

                    for (int k = 0; k < n; k++)
                    {
                        double apk = a[pi * n + k];
                        double aqk = a[qi * n + k];
                        a[pi * n + k] = c * apk - s * aqk;
                        a[qi * n + k] = s * apk + c * aqk;
                    }

                    for (int k = 0; k < n; k++)
                    {
                        double ekp = e[k * n + pi];
                        double ekq = e[k * n + qi];
                        e[k * n + pi] = c * ekp - s * ekq;
                        e[k * n + qi] = s * ekp + c * ekq;
                    }
                }
            }
        }

        return (Enumerable.Range(0, n).Select(i => a[i * n + i]).ToArray(), e);
    }
}
