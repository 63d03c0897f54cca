namespace Onnx.Lora.TorchRef;

/// <summary>
/// Useful FLOPs per trained token of LoRA fine-tuning, counted the same way for both peers:
/// forward = 2·Σ(in·out) over every linear incl. the classifier + 4·seq·hidden per layer (QKᵀ and P·V, full square);
/// backward = the same again for input gradients (frozen weights get no weight gradient); LoRA adds
/// 2·r·(in+out) per adapted linear for forward and 4·r·(in+out) for backward (input and A/B gradients).
/// Elementwise ops (norms, RoPE, softmax, SiLU) are not counted.
/// </summary>
internal static class TrainingFlops
{
    public static double PerToken(LlamaGraphFacts facts, int seqLen)
    {
        ArgumentNullException.ThrowIfNull(facts);
        double linear = facts.Linears.Values.Sum(l => 2.0 * l.In * l.Out);
        double attention = facts.Layers * 4.0 * seqLen * facts.Heads * facts.HeadDim;
        double lora = facts.Manifest?.Modules.Sum(m => 6.0 * m.Rank * (m.InFeatures + m.OutFeatures)) ?? 0;
        return (2 * (linear + attention)) + lora;
    }
}
