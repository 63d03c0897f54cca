using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>
/// com.microsoft MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?) with attributes K (in), N (out), bits and
/// block_size: y = A·dequant(B)ᵀ with B packed [N, K/block_size, block_size·bits/8]. The QLoRA case: the base stays int4.
/// </summary>
public sealed class MatMulNBitsMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "MatMulNBits";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("MatMulNBits", "com.microsoft") || node.Inputs.Count < 3 || node.Inputs[0] is not { } x)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a com.microsoft MatMulNBits");
        }

        if (node.Inputs[1] is not { Initializer: not null } b)
        {
            return MatchResult<LinearTarget>.Fail($"MatMulNBits '{node.Name}': the packed weight is not an initializer");
        }

        if (node.Inputs[2] is not { Initializer: not null } scales)
        {
            return MatchResult<LinearTarget>.Fail($"MatMulNBits '{node.Name}': the scales are not an initializer");
        }

        long k = node.GetInt("K", -1);
        long n = node.GetInt("N", -1);
        if (k <= 0 || n <= 0)
        {
            return MatchResult<LinearTarget>.Fail($"MatMulNBits '{node.Name}' lacks valid K/N attributes (K={k}, N={n})");
        }

        Value? zeroPoints = node.Inputs.Count > 3 ? node.Inputs[3] : null;
        Value? bias = node.Inputs.Count > 5 ? node.Inputs[5] : null;
        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.MatMulNBits,
            Activation = x,
            WeightInput = b,
            Weight = b,
            Layout = WeightLayout.MatMulNBits,
            InFeatures = k,
            OutFeatures = n,
            ActivationType = scales.Initializer!.DataType,
            Quantized = true,
            Bits = (int)node.GetInt("bits", 4),
            BlockSize = (int)node.GetInt("block_size", 32),
            Scales = scales.Name,
            ZeroPoints = zeroPoints?.Name,
            Bias = bias?.Initializer is not null ? bias.Name : null,
            BiasInNode = bias?.Initializer is not null,
        });
    }
}
