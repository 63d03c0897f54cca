// Combining adapters into one, as PEFT's add_weighted_adapter does (per module, weights w_i, scales s_i):
//   cat:    A = [w_1·s_1·A_1 | … | w_k·s_k·A_k] [in, Σr_i], B = [B_1; …; B_k]  ⇒  A·B = Σ w_i·s_i·A_i·B_i   (exact)
//   linear: A = Σ √(w_i·s_i)·A_i, B = Σ √(w_i·s_i)·B_i (same rank r)  ⇒  A·B = Σ_i Σ_j √(w_i s_i w_j s_j)·A_i·B_j,
//           NOT Σ w_i·s_i·A_i·B_i: the cross terms A_i·B_j stay. It is PEFT's "linear" and only meaningful for adapters
//           that share an initialization (same A subspace); use cat or svd for the exact weighted sum.
//   svd:    Σ w_i·s_i·A_i·B_i = U·S·Vᵀ, truncated to the target rank k: A = U_k [in, k], B = S_k·V_kᵀ [k, out]
//           (PEFT puts S on lora_B too); the Frobenius error is √(Σ_{j>k} σ_j²).
// The result carries scale 1 (PEFT writes lora_alpha = r for the combined adapter).

using Onnx.Lora.Formats;

namespace Onnx.Lora.Exporter.Combine;

/// <summary>How adapters are combined; the names are PEFT's combination_type values.</summary>
public enum CombinationType
{
    /// <summary>Concatenate ranks: exact weighted sum, rank Σ r_i.</summary>
    Cat,

    /// <summary>PEFT's "linear": √(w·s)-weighted sums of A and of B; needs equal ranks; keeps cross terms.</summary>
    Linear,

    /// <summary>Exact weighted sum of the deltas, truncated to a rank by SVD.</summary>
    Svd,
}

/// <summary>One input of a combination.</summary>
/// <param name="Name">Where the adapter came from (used in messages).</param>
/// <param name="Weights">The adapter.</param>
/// <param name="Weight">Its weight w_i.</param>
public sealed record WeightedAdapter(string Name, LoraWeights Weights, double Weight);

/// <summary>What a combination produced, per module: the rank and, for SVD, the dropped singular values.</summary>
/// <param name="Module">Module name.</param>
/// <param name="Rank">Rank of the combined module.</param>
/// <param name="DroppedFrobenius">√(Σ dropped σ²): the Frobenius norm of ΔW_exact − ΔW_combined (SVD only; 0 otherwise).</param>
/// <param name="SingularValues">All singular values of the exact weighted sum (SVD only; empty otherwise).</param>
public sealed record CombinedModuleReport(string Module, int Rank, double DroppedFrobenius, IReadOnlyList<double> SingularValues);

/// <summary>The combined adapter and a per-module report.</summary>
/// <param name="Weights">The combined adapter (scale 1).</param>
/// <param name="Modules">Per-module facts.</param>
public sealed record CombineResult(LoraWeights Weights, IReadOnlyList<CombinedModuleReport> Modules);

/// <summary>Combines several adapters into one (PEFT's add_weighted_adapter for cat, linear and svd).</summary>
public static class AdapterCombiner
{
    /// <summary>
    /// Combines <paramref name="adapters"/> module by module. A module missing from some adapters combines the
    /// adapters that have it. <paramref name="svdRank"/> (SVD only) defaults to the largest input rank, as PEFT does.
    /// </summary>
    /// <exception cref="AdapterMismatchException">Shapes of one module differ between adapters, ranks differ for
    /// linear, a weight is invalid, or an adapter uses DoRA (its magnitude rescales columns; no sum can express it).</exception>
    public static CombineResult Combine(IReadOnlyList<WeightedAdapter> adapters, CombinationType type, int? svdRank = null)
    {
        ArgumentNullException.ThrowIfNull(adapters);
        if (adapters.Count == 0)
        {
            throw new AdapterMismatchException("Nothing to combine: no adapters given.");
        }

        if (svdRank is { } k && k <= 0)
        {
            throw new AdapterMismatchException($"SVD rank must be > 0; got {k}.");
        }

        foreach (WeightedAdapter a in adapters)
        {
            if (!double.IsFinite(a.Weight))
            {
                throw new AdapterMismatchException($"Weight {a.Weight} of adapter '{a.Name}' is not a finite number.");
            }

            if (a.Weights.Modules.FirstOrDefault(m => m.Magnitude is not null) is { } dora)
            {
                throw new AdapterMismatchException($"Adapter '{a.Name}' uses DoRA (module '{dora.Module}'): its magnitude rescales each output column, so it cannot be summed with other adapters. Merge it instead.");
            }
        }

        var modules = new List<LoraModuleWeights>();
        var reports = new List<CombinedModuleReport>();
        foreach (string module in adapters.SelectMany(a => a.Weights.Modules.Select(m => m.Module)).Distinct(StringComparer.Ordinal))
        {
            var parts = adapters.Select(a => (a.Name, a.Weight, Module: a.Weights.Find(module))).Where(p => p.Module is not null)
                .Select(p => (p.Name, p.Weight, Module: p.Module!)).ToList();
            LoraModuleWeights first = parts[0].Module;
            if (parts.FirstOrDefault(p => p.Module.InFeatures != first.InFeatures || p.Module.OutFeatures != first.OutFeatures) is { Module: not null } bad)
            {
                throw new AdapterMismatchException($"Module '{module}' is [{first.InFeatures}→{first.OutFeatures}] in '{parts[0].Name}' but [{bad.Module.InFeatures}→{bad.Module.OutFeatures}] in '{bad.Name}'.");
            }

            (LoraModuleWeights combined, CombinedModuleReport report) = type switch
            {
                CombinationType.Cat => Cat(module, parts),
                CombinationType.Linear => Linear(module, parts),
                CombinationType.Svd => Svd(module, parts, svdRank ?? adapters.Max(a => a.Weights.Modules.Count == 0 ? 1 : a.Weights.Modules.Max(m => m.Rank))),
                _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Unknown combination type."),
            };
            modules.Add(combined);
            reports.Add(report);
        }

        return new CombineResult(new LoraWeights(modules), reports);
    }

    private static (LoraModuleWeights, CombinedModuleReport) Cat(string module, List<(string Name, double Weight, LoraModuleWeights Module)> parts)
    {
        (double[] a, double[] b, int rank, int inF, int outF) = Concatenate(parts);
        var result = new LoraModuleWeights(module, inF, outF, rank, ToFloat(a), ToFloat(b), 1f);
        return (result, new CombinedModuleReport(module, rank, 0, []));
    }

    private static (LoraModuleWeights, CombinedModuleReport) Linear(string module, List<(string Name, double Weight, LoraModuleWeights Module)> parts)
    {
        LoraModuleWeights first = parts[0].Module;
        if (parts.FirstOrDefault(p => p.Module.Rank != first.Rank) is { Module: not null } other)
        {
            throw new AdapterMismatchException($"Linear combination needs equal ranks (as PEFT requires): module '{module}' has rank {first.Rank} in '{parts[0].Name}' and {other.Module.Rank} in '{other.Name}'. Use cat or svd.");
        }

        var a = new double[first.A.Length];
        var b = new double[first.B.Length];
        foreach ((string name, double weight, LoraModuleWeights m) in parts)
        {
            double product = weight * m.Scale;
            if (product < 0)
            {
                throw new AdapterMismatchException($"Linear combination weighs A and B by √(w·scale); adapter '{name}' has w·scale = {product} < 0 for module '{module}'. Use cat or svd for negative weights.");
            }

            double root = Math.Sqrt(product);
            for (int i = 0; i < a.Length; i++)
            {
                a[i] += root * m.A[i];
            }

            for (int i = 0; i < b.Length; i++)
            {
                b[i] += root * m.B[i];
            }
        }

        var result = new LoraModuleWeights(module, first.InFeatures, first.OutFeatures, first.Rank, ToFloat(a), ToFloat(b), 1f);
        return (result, new CombinedModuleReport(module, first.Rank, 0, []));
    }

    private static (LoraModuleWeights, CombinedModuleReport) Svd(string module, List<(string Name, double Weight, LoraModuleWeights Module)> parts, int targetRank)
    {
        (double[] a, double[] b, int rank, int inF, int outF) = Concatenate(parts);
        LowRankSvdResult svd = LowRankSvd.Compute(a, b, inF, outF, rank);
        int k = Math.Min(targetRank, rank);
        var newA = new float[inF * k];
        var newB = new float[k * outF];
        for (int i = 0; i < inF; i++)
        {
            for (int j = 0; j < k; j++)
            {
                newA[(i * k) + j] = (float)svd.U[(i * rank) + j];
            }
        }

        for (int j = 0; j < k; j++)
        {
            for (int o = 0; o < outF; o++)
            {
                newB[(j * outF) + o] = (float)(svd.S[j] * svd.V[(o * rank) + j]);
            }
        }

        double dropped = Math.Sqrt(svd.S.Skip(k).Sum(s => s * s));
        if (targetRank > rank)
        {
            // Pad with zero directions so every module has the requested rank (one rank for the whole adapter).
            (newA, newB) = Pad(newA, newB, inF, outF, k, targetRank);
            k = targetRank;
        }

        return (new LoraModuleWeights(module, inF, outF, k, newA, newB, 1f), new CombinedModuleReport(module, k, dropped, svd.S));
    }

    /// <summary>A = [w_i·s_i·A_i] side by side [in, Σr], B = [B_i] stacked [Σr, out], in double.</summary>
    private static (double[] A, double[] B, int Rank, int In, int Out) Concatenate(List<(string Name, double Weight, LoraModuleWeights Module)> parts)
    {
        int inF = parts[0].Module.InFeatures, outF = parts[0].Module.OutFeatures;
        int rank = parts.Sum(p => p.Module.Rank);
        var a = new double[inF * rank];
        var b = new double[rank * outF];
        int offset = 0;
        foreach ((_, double weight, LoraModuleWeights m) in parts)
        {
            double factor = weight * m.Scale;
            for (int i = 0; i < inF; i++)
            {
                for (int k = 0; k < m.Rank; k++)
                {
                    a[(i * rank) + offset + k] = factor * m.A[(i * m.Rank) + k];
                }
            }

            for (int k = 0; k < m.Rank; k++)
            {
                for (int o = 0; o < outF; o++)
                {
                    b[((offset + k) * outF) + o] = m.B[(k * outF) + o];
                }
            }

            offset += m.Rank;
        }

        return (a, b, rank, inF, outF);
    }

    private static (float[] A, float[] B) Pad(float[] a, float[] b, int inF, int outF, int rank, int target)
    {
        var pa = new float[inF * target];
        for (int i = 0; i < inF; i++)
        {
            a.AsSpan(i * rank, rank).CopyTo(pa.AsSpan(i * target, rank));
        }

        var pb = new float[target * outF];
        b.CopyTo(pb, 0);
        return (pa, pb);
    }

    private static float[] ToFloat(double[] values)
    {
        var result = new float[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            result[i] = (float)values[i];
        }

        return result;
    }
}
