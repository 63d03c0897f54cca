using System.Numerics.Tensors;

namespace Onnx.Lora;

/// <summary>
/// Merge arithmetic on float32 spans. W' = W + s·A·B (A [in,r], B [r,out]), written into W stored [in,out] or
/// [out,in]; DoRA then rescales each output feature j: W'_j = m_j / ‖W_j + s(AB)_j‖ · (W_j + s(AB)_j).
/// </summary>
public static class LoraMath
{
    /// <summary>Adds <paramref name="scale"/>·A·B to <paramref name="weight"/> in place.</summary>
    /// <exception cref="ArgumentException">A span length does not match the shapes.</exception>
    public static void AddDelta(Span<float> weight, WeightLayout layout, int inFeatures, int outFeatures, ReadOnlySpan<float> a, ReadOnlySpan<float> b, int rank, float scale)
    {
        if (weight.Length != (long)inFeatures * outFeatures || a.Length != (long)inFeatures * rank || b.Length != (long)rank * outFeatures)
        {
            throw new ArgumentException($"Shapes do not match: W {weight.Length} values for [{inFeatures},{outFeatures}], A {a.Length} for r={rank}, B {b.Length}.");
        }

        if (layout == WeightLayout.InOut)
        {
            // Row i of W gains s·Σ_k A[i,k]·B[k,:].
            for (int i = 0; i < inFeatures; i++)
            {
                Span<float> row = weight.Slice(i * outFeatures, outFeatures);
                for (int k = 0; k < rank; k++)
                {
                    TensorPrimitives.MultiplyAdd(b.Slice(k * outFeatures, outFeatures), scale * a[(i * rank) + k], row, row);
                }
            }
        }
        else
        {
            // Row j of Wᵀ gains s·Σ_k B[k,j]·A[:,k]: walk Aᵀ rows, so transpose A once.
            float[] aT = new float[a.Length];
            for (int i = 0; i < inFeatures; i++)
            {
                for (int k = 0; k < rank; k++)
                {
                    aT[(k * inFeatures) + i] = a[(i * rank) + k];
                }
            }

            for (int j = 0; j < outFeatures; j++)
            {
                Span<float> row = weight.Slice(j * inFeatures, inFeatures);
                for (int k = 0; k < rank; k++)
                {
                    TensorPrimitives.MultiplyAdd(aT.AsSpan(k * inFeatures, inFeatures), scale * b[(k * outFeatures) + j], row, row);
                }
            }
        }
    }

    /// <summary>DoRA: rescales each output feature of the already-merged <paramref name="weight"/> to norm magnitude[j].</summary>
    public static void ApplyMagnitude(Span<float> weight, WeightLayout layout, int inFeatures, int outFeatures, ReadOnlySpan<float> magnitude)
    {
        if (magnitude.Length != outFeatures || weight.Length != (long)inFeatures * outFeatures)
        {
            throw new ArgumentException($"Magnitude has {magnitude.Length} values for {outFeatures} output features.");
        }

        if (layout != WeightLayout.InOut)
        {
            for (int j = 0; j < outFeatures; j++)
            {
                Span<float> row = weight.Slice(j * inFeatures, inFeatures);
                TensorPrimitives.Multiply(row, magnitude[j] / TensorPrimitives.Norm(row), row);
            }

            return;
        }

        // Columns of [in,out]: accumulate squared norms row by row (contiguous), then scale.
        float[] norms = new float[outFeatures];
        for (int i = 0; i < inFeatures; i++)
        {
            ReadOnlySpan<float> row = weight.Slice(i * outFeatures, outFeatures);
            TensorPrimitives.MultiplyAdd(row, row, norms, norms);
        }

        TensorPrimitives.Sqrt(norms, norms);
        TensorPrimitives.Divide(magnitude, norms, norms);
        for (int i = 0; i < inFeatures; i++)
        {
            Span<float> row = weight.Slice(i * outFeatures, outFeatures);
            TensorPrimitives.Multiply(row, norms, row);
        }
    }
}
