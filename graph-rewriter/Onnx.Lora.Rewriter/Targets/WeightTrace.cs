using Onnx.Lora.Graph;

namespace Onnx.Lora.Rewriter.Targets;

/// <summary>Where a weight input comes from: an initializer, seen through Identity / Cast / Transpose / DequantizeLinear.</summary>
internal sealed record WeightTrace(Value Initializer, bool Transposed, bool Quantized, DataType ConsumedType)
{
    /// <summary>Walks from <paramref name="input"/> up to the constant it is computed from.</summary>
    public static MatchResult<WeightTrace> From(Value? input)
    {
        if (input is null)
        {
            return MatchResult<WeightTrace>.Fail("the weight input is omitted");
        }

        bool transposed = false;
        bool quantized = false;
        DataType? consumed = null;
        Value current = input;
        for (int depth = 0; depth < 8; depth++)
        {
            if (current.IsGraphInput)
            {
                return MatchResult<WeightTrace>.Fail($"weight '{current.Name}' is a graph input, not a constant");
            }

            if (current.Initializer is { } tensor)
            {
                if (tensor.Dims.Count != 2)
                {
                    return MatchResult<WeightTrace>.Fail($"weight '{current.Name}' has rank {tensor.Dims.Count}; a linear layer needs a 2-D weight");
                }

                // An integer or string MatMul (index arithmetic, a hand-made model) is no linear layer: LoRA's delta
                // is float, and neither the initializer nor the merge could hold it. Quantized weights are integers
                // by design; what the layer computes in is the dequantized (scale) type.
                DataType computed = consumed ?? tensor.DataType;
                if ((!quantized && !tensor.DataType.IsFloatingPoint()) || !computed.IsFloatingPoint())
                {
                    return MatchResult<WeightTrace>.Fail($"weight '{current.Name}' is {tensor.DataType.ShortName()} (computed as {computed.ShortName()}); LoRA adapts float weights only");
                }

                return MatchResult<WeightTrace>.Ok(new WeightTrace(current, transposed, quantized, consumed ?? tensor.DataType));
            }

            Node? producer = current.Producer;
            if (producer is null)
            {
                return MatchResult<WeightTrace>.Fail($"weight '{current.Name}' is not a constant");
            }

            switch (producer.OpType)
            {
                case "Identity" when producer.IsStandardDomain:
                    break;
                case "Cast" when producer.IsStandardDomain:
                    consumed ??= (DataType)producer.GetInt("to", 0);
                    break;
                case "Transpose" when producer.IsStandardDomain:
                    IReadOnlyList<long>? perm = producer.GetAttribute("perm")?.AsInts();
                    if (perm is not null && !(perm.Count == 2 && perm[0] == 1 && perm[1] == 0))
                    {
                        return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' goes through Transpose '{producer.Name}' with perm [{string.Join(",", perm)}]");
                    }

                    transposed = !transposed;
                    break;
                case "DequantizeLinear" when producer.IsStandardDomain || producer.Domain == "com.microsoft":
                    quantized = true;
                    if (consumed is null && producer.Inputs.Count > 1 && producer.Inputs[1] is { } scale)
                    {
                        consumed = scale.Initializer?.DataType ?? scale.ElementType;
                    }

                    break;
                default:
                    return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' is computed by {producer.OpType} '{producer.Name}', not a constant");
            }

            if (producer.Inputs.Count == 0 || producer.Inputs[0] is not { } upstream)
            {
                return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' has no source");
            }

            current = upstream;
        }

        return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' is too many steps away from a constant");
    }
}
