using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>
/// com.microsoft Attention(input, weights, bias, ...) from ORT's transformers optimizer: the fused qkv projection
/// (GPT-2's c_attn) lives inside the attention op as its weight input [in, 3·hidden]. PEFT adapts c_attn as one module.
/// </summary>
public sealed class FusedAttentionMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "Attention (com.microsoft)";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("Attention", "com.microsoft") || node.Inputs.Count < 2 || node.Inputs[0] is not { } x)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a com.microsoft Attention");
        }

        MatchResult<WeightTrace> trace = WeightTrace.From(node.Inputs[1]);
        if (!trace.Success)
        {
            return MatchResult<LinearTarget>.Fail($"Attention '{node.Name}': {trace.Reason}");
        }

        WeightTrace w = trace.Value!;
        if (w.Transposed || w.Quantized)
        {
            return MatchResult<LinearTarget>.Fail($"Attention '{node.Name}': weight '{w.Source.Name}' is transposed or quantized");
        }

        IReadOnlyList<long> dims = w.Dims;
        Value? bias = node.Inputs.Count > 2 ? node.Inputs[2] : null;
        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.Attention,
            Activation = x,
            WeightInput = node.Inputs[1]!,
            Weight = w.Source,
            WeightReshaped = w.Reshaped,
            Layout = WeightLayout.InOut,
            InFeatures = dims[0],
            OutFeatures = dims[1],
            ActivationType = w.ConsumedType,
            Bias = bias?.Initializer is not null ? bias.Name : null,
            BiasInNode = bias?.Initializer is not null,
        });
    }
}
