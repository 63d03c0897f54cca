using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// com.microsoft MatMulNBits: Y = A·dequant(B)ᵀ (+ bias), B int4 [N, blocks, blob] with per-block scales and optional
/// zero points. The weight is frozen (LoRA trains beside it), so only dA = dY·dequant(B) is emitted. The weight is
/// dequantized in the graph at run time with standard ops (nibble unpacking with integer Div / Sub, then
/// (q − zero_point)·scale), reading the packed initializer directly: no fp32 copy of the weight is stored.
/// </summary>
public sealed class MatMulNBitsGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["MatMulNBits"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        Value dy = step.OutputGradient(0)!;
        if (step.NeedsGradient(1) || step.NeedsGradient(2) || step.NeedsGradient(3))
        {
            throw new LoraException($"MatMulNBits '{node.Name}': quantized weights, scales and zero points cannot be trained.");
        }

        if (step.NeedsGradient(5))
        {
            step.SetInputGradient(5, context.Unbroadcast(dy, step.Input(5), step.Output(0)));
        }

        if (!step.NeedsGradient(0))
        {
            return;
        }

        long bits = node.GetInt("bits", 4);
        if (bits != 4)
        {
            throw new LoraException($"MatMulNBits '{node.Name}' has bits={bits}; only 4-bit weights are supported for the activation gradient.");
        }

        if (step.OptionalInput(4) is not null)
        {
            throw new LoraException($"MatMulNBits '{node.Name}' uses g_idx (act-order); its gradient is not supported.");
        }

        long k = node.GetInt("K", 0);
        long n = node.GetInt("N", 0);
        long blockSize = node.GetInt("block_size", 0);
        if (k <= 0 || n <= 0 || blockSize <= 0)
        {
            throw new LoraException($"MatMulNBits '{node.Name}' lacks K, N or block_size attributes.");
        }

        long blocks = (k + blockSize - 1) / blockSize;
        DataType type = context.TypeOf(dy) is DataType.Undefined ? DataType.Float : context.TypeOf(dy);
        Value q = Unpack(context, step.Input(1), [n, blocks, blockSize]);
        Value scales = context.Op("Reshape", [context.Op("Cast", [step.Input(2)], Attr.Int("to", (long)type)), context.Ints(n, blocks, 1)]);
        Value zero;
        if (step.OptionalInput(3) is { } zp)
        {
            DataType zpType = context.TypeOf(zp);
            zero = zpType == DataType.UInt8
                ? context.Op("Slice", [Unpack(context, zp, [n, -1]), context.Ints(0), context.Ints(blocks), context.Ints(1)])
                : zp;
            zero = context.Op("Reshape", [context.Op("Cast", [zero], Attr.Int("to", (long)type)), context.Ints(n, blocks, 1)]);
        }
        else
        {
            zero = context.Scalar(8, type);
        }

        Value w = context.Mul(context.Sub(context.Op("Cast", [q], Attr.Int("to", (long)type)), zero), scales);
        Value flat = context.Op("Reshape", [w, context.Ints(n, blocks * blockSize)]);
        if (blocks * blockSize != k)
        {
            flat = context.Op("Slice", [flat, context.Ints(0), context.Ints(k), context.Ints(1)]);
        }

        // Y = A·Wᵀ with W [N, K]  ⇒  dA = dY·W.
        step.SetInputGradient(0, context.Op("MatMul", [dy, flat]));
    }

    /// <summary>
    /// uint8 bytes holding two 4-bit values each (low nibble first) → int32 values reshaped to <paramref name="shape"/>.
    /// Integer Div/Sub instead of BitwiseAnd/BitShift keeps this valid at every opset the op appears with.
    /// </summary>
    private static Value Unpack(GradientContext context, Value packed, long[] shape)
    {
        Value bytes = context.Op("Cast", [packed], Attr.Int("to", (long)DataType.Int32));
        Value sixteen = context.Scalar(16, DataType.Int32);
        Value high = context.Div(bytes, sixteen);
        Value low = context.Sub(bytes, context.Mul(high, sixteen));
        Value pairs = context.Op("Concat", [context.Unsqueeze(low, [-1]), context.Unsqueeze(high, [-1])], Attr.Int("axis", -1));
        return context.Op("Reshape", [pairs, context.Ints(shape)]);
    }
}
