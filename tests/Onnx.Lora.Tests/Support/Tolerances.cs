namespace Onnx.Lora.Tests.Support;

/// <summary>Tolerances of the output comparisons, stated once (max abs or relative error, see each).</summary>
internal static class Tolerances
{
    /// <summary>B = 0: the branch adds exact zeros, so fp32 outputs must match to this (max abs diff).</summary>
    public const float ZeroAdapterAbs = 1e-6f;

    /// <summary>LoRA model vs base with W + s·A·B, fp32 (max abs diff / max abs of the reference).</summary>
    public const float MergedRelFp32 = 1e-4f;

    /// <summary>The same for fp16 bases: the reference rounds W + s·A·B to fp16, the branch rounds x·A and x·A·B.</summary>
    public const float MergedRelFp16 = 5e-3f;

    /// <summary>Merged model vs the unmerged LoRA model or ORT's own adapter loader, fp32 (max abs diff / max abs of the reference).</summary>
    public const double MergeRelFp32 = 1e-5;

    /// <summary>The same for fp16 bases: the merged weight is rounded to fp16 once, the unmerged branch per product.</summary>
    public const double MergeRelFp16 = 1e-2;
}
