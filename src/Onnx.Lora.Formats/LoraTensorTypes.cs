using Onnx.Lora.Ir;

namespace Onnx.Lora.Formats;

/// <summary>
/// The element types a LoRA tensor (A, B, DoRA magnitude) may have in any adapter file. Every reader that turns an
/// adapter tensor into numbers goes through <see cref="Require"/>: an integer tensor converted "as numbers" would merge
/// values millions of times too large without any error.
/// </summary>
public static class LoraTensorTypes
{
    /// <summary>The accepted types, as messages name them.</summary>
    public const string Accepted = "float32, float16, bfloat16 or float64";

    /// <summary>True for the types LoRA weights are stored in (what PEFT and ONNX Runtime write).</summary>
    public static bool IsAccepted(DataType type) => type.IsFloatingPoint();

    /// <summary>Refuses a LoRA tensor that is not float.</summary>
    /// <exception cref="AdapterFormatException">The type is not float; the message names the tensor and the file.</exception>
    public static void Require(DataType type, string tensor, string file)
    {
        if (!IsAccepted(type))
        {
            throw new AdapterFormatException($"Tensor '{tensor}' of adapter '{file}' is {type.ShortName()}; LoRA weights must be {Accepted}.");
        }
    }
}
