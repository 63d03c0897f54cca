namespace Onnx.Lora.Formats.Peft;

/// <summary>
/// The keys and shapes PEFT writes per module kind. Linear: lora_A.weight [r, in], lora_B.weight [out, r].
/// Conv (PEFT's Conv1d/2d/3d): lora_A.weight [r, in, k…] (a conv with the layer's kernel), lora_B.weight [out, r, 1…]
/// (a pointwise conv). Embedding: lora_embedding_A [r, rows], lora_embedding_B [dim, r] (no ".weight": PEFT keeps them
/// as parameters, not modules). All hold the same numbers as Linear's [r, in] / [out, r] in row-major order.
/// </summary>
internal static class PeftTensorForm
{
    /// <summary>The key suffixes and dims of <paramref name="m"/>'s A and B.</summary>
    public static (string AKey, long[] ADims, string BKey, long[] BDims) Of(LoraModuleWeights m)
    {
        if (m.Embedding)
        {
            return (".lora_embedding_A", [m.Rank, m.InFeatures], ".lora_embedding_B", [m.OutFeatures, m.Rank]);
        }

        if (m.Kernel is { } kernel)
        {
            long inChannels = m.InFeatures / kernel.Aggregate(1L, (p, k) => p * k);
            return (".lora_A.weight", [m.Rank, inChannels, .. kernel], ".lora_B.weight", [m.OutFeatures, m.Rank, .. kernel.Select(_ => 1L)]);
        }

        return (".lora_A.weight", [m.Rank, m.InFeatures], ".lora_B.weight", [m.OutFeatures, m.Rank]);
    }

    /// <summary>The kernel of a Conv module stored as lora_A [r, in, k…] and lora_B [out, r, 1…]; null for 2-D tensors or other shapes.</summary>
    public static IReadOnlyList<long>? ConvKernel(IReadOnlyList<long> a, IReadOnlyList<long> b)
    {
        if (a.Count < 3 || b.Count != a.Count || b.Skip(2).Any(d => d != 1))
        {
            return null;
        }

        return a.Skip(2).ToArray();
    }
}
