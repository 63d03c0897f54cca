using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>
/// Where a weight input comes from: an initializer or a <c>Constant</c> node, seen through Identity / Cast / Transpose /
/// Reshape / DequantizeLinear.
/// </summary>
/// <param name="Source">The stored weight: an initializer, or the output of a Constant node.</param>
/// <param name="Data">The stored tensor (the initializer's data or the Constant's <c>value</c>).</param>
/// <param name="Dims">The 2-D shape the stored data is read as: its own shape, or the target of a Reshape that views it.</param>
/// <param name="Transposed">True when the consumer reads the transpose of <paramref name="Dims"/>.</param>
/// <param name="Quantized">True when a DequantizeLinear sits between the data and the consumer.</param>
/// <param name="ConsumedType">Element type the consumer reads.</param>
/// <param name="Reshaped">True when a Reshape views the stored data as <paramref name="Dims"/> (same row-major order).</param>
internal sealed record WeightTrace(Value Source, Tensor Data, IReadOnlyList<long> Dims, bool Transposed, bool Quantized, DataType ConsumedType, bool Reshaped)
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
        Tensor? view = null;
        DataType? consumed = null;
        Value current = input;
        for (int depth = 0; depth < 8; depth++)
        {
            if (current.IsGraphInput)
            {
                return MatchResult<WeightTrace>.Fail($"weight '{current.Name}' is a graph input, not a constant");
            }

            if (ConstantWeights.TensorOf(current) is { } tensor)
            {
                return Found(input, current, tensor, view, transposed, quantized, consumed ?? tensor.DataType);
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

                    if (view is not null)
                    {
                        // NOTE: a Transpose before a Reshape reorders the stored elements: the view is no longer row-major.
                        return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' is transposed before Reshape; only a Reshape of the stored weight is supported");
                    }

                    transposed = !transposed;
                    break;
                case "Reshape" when producer.IsStandardDomain:
                    if (view is not null || producer.Inputs.Count < 2 || ConstantWeights.TensorOf(producer.Inputs[1]) is not { DataType: DataType.Int64 } shape)
                    {
                        return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' goes through Reshape '{producer.Name}' with a shape that is not a constant");
                    }

                    // NOTE: the shape is read only once the chain is known to end at a constant (no bytes read for activations).
                    view = shape;
                    break;
                case "DequantizeLinear" when producer.IsStandardDomain || producer.Domain == "com.microsoft":
                    quantized = true;
                    if (consumed is null && producer.Inputs.Count > 1 && producer.Inputs[1] is { } scale)
                    {
                        consumed = ConstantWeights.TensorOf(scale)?.DataType ?? scale.ElementType;
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

    private static MatchResult<WeightTrace> Found(Value input, Value source, Tensor tensor, Tensor? view, bool transposed, bool quantized, DataType consumed)
    {
        IReadOnlyList<long> dims = tensor.Dims;
        if (view is not null)
        {
            long[] shape = view.ElementCount <= 8 ? view.ToArray<long>() : [];
            long[]? resolved = ResolveView(shape, tensor.ElementCount);
            if (resolved is null)
            {
                return MatchResult<WeightTrace>.Fail($"weight '{input.Name}' is reshaped to [{string.Join(",", shape)}], which is not a 2-D view of its {tensor.ElementCount} elements");
            }

            dims = resolved;
        }

        if (dims.Count != 2)
        {
            return MatchResult<WeightTrace>.Fail($"weight '{source.Name}' has rank {dims.Count}; a linear layer needs a 2-D weight");
        }

        // An integer or string MatMul (index arithmetic, a hand-made model) is no linear layer: LoRA's delta
        // is float, and neither the initializer nor the merge could hold it. Quantized weights are integers
        // by design; what the layer computes in is the dequantized (scale) type.
        if ((!quantized && !tensor.DataType.IsFloatingPoint()) || !consumed.IsFloatingPoint())
        {
            return MatchResult<WeightTrace>.Fail($"weight '{source.Name}' is {tensor.DataType.ShortName()} (computed as {consumed.ShortName()}); LoRA adapts float weights only");
        }

        return MatchResult<WeightTrace>.Ok(new WeightTrace(source, tensor, dims, transposed, quantized, consumed, view is not null));
    }

    // Reshape's shape with at most one -1; a 0 (copy the input dim) is refused because the stored rank differs.
    private static long[]? ResolveView(long[] view, long elements)
    {
        if (view.Length != 2 || view.Count(d => d == -1) > 1 || view.Any(d => d == 0 || d < -1))
        {
            return null;
        }

        long known = view.Where(d => d > 0).Aggregate(1L, (a, d) => a * d);
        long[] dims = view.Select(d => d == -1 ? (known == 0 ? -1 : elements / known) : d).ToArray();
        return dims[0] * dims[1] == elements ? dims : null;
    }
}
