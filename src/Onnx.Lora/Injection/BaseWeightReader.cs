using Onnx.Lora.Ir;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Injection;

/// <summary>
/// Reads a target's base weight as float32 in MatMul layout [in, out]. Only DoRA (magnitude) and PiSSA (SVD) call
/// it: plain injection never touches weight bytes.
/// </summary>
internal static class BaseWeightReader
{
    /// <summary>True when the weight is stored as plain floating-point data this reader understands.</summary>
    public static bool CanRead(LinearTarget target) =>
        !target.Quantized && target.WeightData is { } t && t.DataType is DataType.Float or DataType.Float16 or DataType.BFloat16;

    /// <summary>W as float32 [in, out].</summary>
    /// <exception cref="PassException">The weight is quantized or not floating point.</exception>
    public static float[] ReadInOut(LinearTarget target, string why)
    {
        if (!CanRead(target))
        {
            throw new PassException($"{why} needs the weight of '{target.Module}', but '{target.Weight.Name}' is {(target.Quantized ? "quantized" : target.WeightType.ToString())}; use plain LoRA for this layer (exclude it).");
        }

        float[] stored = target.WeightData!.ToFloat32();
        return target.Layout == WeightLayout.OutIn ? Transpose(stored, (int)target.OutFeatures, (int)target.InFeatures) : stored;
    }

    /// <summary>Writes a float32 [in, out] matrix back in the weight's stored layout and element type.</summary>
    public static Tensor ToStored(LinearTarget target, float[] inOut)
    {
        float[] stored = target.Layout == WeightLayout.OutIn ? Transpose(inOut, (int)target.InFeatures, (int)target.OutFeatures) : inOut;
        Tensor original = target.WeightData!;
        return new InMemoryTensor(original.Name, original.DataType, original.Dims, TensorConvert.FromFloat32(stored, original.DataType));
    }

    /// <summary>Transposes a row-major [rows, cols] matrix.</summary>
    public static float[] Transpose(ReadOnlySpan<float> m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                t[c * rows + r] = m[r * cols + c];
            }
        }

        return t;
    }
}
