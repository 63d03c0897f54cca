// LoRA branches of the layers that are not plain matrix products, as PEFT computes them:
//
//   Conv:       y' = y + conv₁ₓ₁(conv(x, A_c; the layer's kernel, strides, pads, dilations; group 1)·s, B_c)
//               A_c [r, in, k…] = reshape(Aᵀ), B_c [out, r, 1…] = reshape(Bᵀ), with A [in·Πk, r], B [r, out] as the
//               graph stores every module (MatMul layout of the flattened receptive field); by linearity
//               W' = W + s·(B_c ⊗ A_c), i.e. W'[o, i, k…] = W + s·Σ_r B[r, o]·A[(i, k…), r]: merge is exact.
//   Embedding:  y' = y + (gather(A, ids)·s)·B,  A [rows, r], B [r, dim]: PEFT's embedding(x, lora_embedding_A.T) @
//               lora_embedding_B.T · s, and W' = W + s·A·B. PEFT initializes A = 0 and B ~ N(0, 1) for embeddings
//               (the reverse of Linear), so a fresh adapter changes nothing; no dropout (PEFT applies none).
using Onnx.Lora.Ir;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Injection;

/// <summary>Builds the Conv and Embedding LoRA branches (see the file header for the math).</summary>
internal static class ShapedBranches
{
    /// <summary>The branch s·conv₁ₓ₁(conv(x, A_c), B_c) for a Conv target.</summary>
    public static Value Conv(GraphBuilder b, LinearTarget t, Value x, Value a, Value bm, Value? scale)
    {
        long inChannels = t.InFeatures / t.Kernel!.Aggregate(1L, (p, k) => p * k);
        // Reshape's 0 copies the rank axis, so the same graph serves a fixed r and an adapter slot's symbolic r (even 0).
        Value aConv = b.Op("Reshape", [b.Transpose(a, [1, 0]), b.Int64s("lora_conv_a_shape", [0, inChannels, .. t.Kernel!])]);
        Attr[] windows = t.Node.Attributes.Values.Where(attr => attr.Name != "group").ToArray();
        Value xa = b.Op("Conv", [x, aConv], windows);
        if (scale is not null)
        {
            xa = b.Mul(xa, scale);
        }

        long[] pointwise = [0, 0, .. t.Kernel!.Select(_ => 1L)];
        Value bConv = b.Op("Reshape", [b.Transpose(bm, [1, 0]), b.Int64s("lora_conv_b_shape", pointwise)]);
        return b.Op("Conv", [xa, bConv]);
    }

    /// <summary>The branch (gather(A, ids)·s)·B for an Embedding target.</summary>
    public static Value Embedding(GraphBuilder b, Value ids, Value a, Value bm, Value? scale)
    {
        Value xa = b.Op("Gather", [a, ids], [Attr.Int("axis", 0)]);
        return b.MatMul(scale is null ? xa : b.Mul(xa, scale), bm);
    }

    /// <summary>PEFT's Embedding init: A = 0 [rows, r], B ~ N(0, 1) [r, dim].</summary>
    public static (float[] A, float[] B) EmbeddingInit(LinearTarget t, int rank, Random random)
    {
        var a = new float[checked((int)(t.InFeatures * rank))];
        var bm = new float[checked((int)(rank * t.OutFeatures))];
        for (int i = 0; i < bm.Length; i++)
        {
            double u1 = 1.0 - random.NextDouble();
            double u2 = random.NextDouble();
            bm[i] = (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }

        return (a, bm);
    }
}
