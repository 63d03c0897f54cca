using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>MatMul(x, W) where W is a constant 2-D weight, possibly behind Transpose / Cast / DequantizeLinear.</summary>
public sealed class MatMulMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "MatMul";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("MatMul") || node.Inputs.Count != 2 || node.Inputs[0] is not { } x)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a two-input MatMul");
        }

        if (x.Initializer is not null)
        {
            return MatchResult<LinearTarget>.Fail($"MatMul '{node.Name}' has a constant left operand '{x.Name}'");
        }

        MatchResult<WeightTrace> trace = WeightTrace.From(node.Inputs[1]);
        if (!trace.Success)
        {
            return MatchResult<LinearTarget>.Fail($"MatMul '{node.Name}': {trace.Reason}");
        }

        WeightTrace w = trace.Value!;
        IReadOnlyList<long> dims = w.Dims;
        long inFeatures = w.Transposed ? dims[1] : dims[0];
        long outFeatures = w.Transposed ? dims[0] : dims[1];
        string? bias = LinearBias.FollowingAdd(node.Outputs[0], outFeatures);
        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.MatMul,
            Activation = x,
            WeightInput = node.Inputs[1]!,
            Weight = w.Source,
            WeightReshaped = w.Reshaped,
            Layout = w.Transposed ? WeightLayout.OutIn : WeightLayout.InOut,
            InFeatures = inFeatures,
            OutFeatures = outFeatures,
            ActivationType = w.ConsumedType,
            Quantized = w.Quantized,
            Bias = bias,
        });
    }
}

/// <summary>Finds the bias of a linear layer that a separate Add applies.</summary>
internal static class LinearBias
{
    /// <summary>The 1-D constant [out] that the only reader of <paramref name="output"/> (an Add) adds, or null.</summary>
    public static string? FollowingAdd(Value output, long outFeatures)
    {
        if (output.Uses.Count != 1 || output.IsGraphOutput)
        {
            return null;
        }

        Node add = output.Uses[0].Node;
        if (!add.Is("Add") || add.Inputs.Count != 2)
        {
            return null;
        }

        Value? other = add.Inputs[1 - output.Uses[0].InputIndex];
        return ConstantWeights.TensorOf(other) is { } t && t.Dims.Count == 1 && t.Dims[0] == outFeatures ? other!.Name : null;
    }
}
