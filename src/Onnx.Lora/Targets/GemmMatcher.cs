using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>Gemm(x, W, C) with a constant 2-D W, any transA/transB, alpha = 1 and an optional bias C (beta = 1).</summary>
public sealed class GemmMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "Gemm";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("Gemm") || node.Inputs.Count < 2 || node.Inputs[0] is not { } x)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a Gemm");
        }

        // NOTE: LoRA adapts the effective weight; an alpha ≠ 1 would make merge and export rescale, so such nodes are left alone.
        if (node.GetFloat("alpha", 1f) != 1f)
        {
            return MatchResult<LinearTarget>.Fail($"Gemm '{node.Name}' has alpha={node.GetFloat("alpha", 1f)}; only alpha=1 is supported");
        }

        MatchResult<WeightTrace> trace = WeightTrace.From(node.Inputs[1]);
        if (!trace.Success)
        {
            return MatchResult<LinearTarget>.Fail($"Gemm '{node.Name}': {trace.Reason}");
        }

        WeightTrace w = trace.Value!;
        bool transB = node.GetInt("transB", 0) != 0;
        bool outIn = transB ^ w.Transposed;
        IReadOnlyList<long> dims = w.Dims;
        long inFeatures = outIn ? dims[1] : dims[0];
        long outFeatures = outIn ? dims[0] : dims[1];

        string? bias = null;
        bool biasInNode = false;
        if (node.Inputs.Count > 2 && node.Inputs[2] is { } c)
        {
            if (node.GetFloat("beta", 1f) != 1f)
            {
                return MatchResult<LinearTarget>.Fail($"Gemm '{node.Name}' has beta={node.GetFloat("beta", 1f)}; only beta=1 is supported");
            }

            bias = ConstantWeights.TensorOf(c) is not null ? c.Name : null;
            biasInNode = true;
            if (bias is null)
            {
                return MatchResult<LinearTarget>.Fail($"Gemm '{node.Name}' adds a non-constant C '{c.Name}'");
            }
        }
        else
        {
            bias = LinearBias.FollowingAdd(node.Outputs[0], outFeatures);
        }

        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.Gemm,
            Activation = x,
            TransposeActivation = node.GetInt("transA", 0) != 0,
            WeightInput = node.Inputs[1]!,
            Weight = w.Source,
            WeightReshaped = w.Reshaped,
            Layout = outIn ? WeightLayout.OutIn : WeightLayout.InOut,
            InFeatures = inFeatures,
            OutFeatures = outFeatures,
            ActivationType = w.ConsumedType,
            Quantized = w.Quantized,
            Bias = bias,
            BiasInNode = biasInNode,
        });
    }
}
