using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>Element-type rules of the <see cref="OpTable"/> entries.</summary>
internal static class Types
{
    /// <summary>The type of the first floating-point input, else of the first input (the default).</summary>
    public static readonly TypeRule FirstFloatInput = static (f, n, _) => f.FirstFloatInputType(n);

    /// <summary>Boolean outputs (comparisons, logic).</summary>
    public static readonly TypeRule Bool = static (_, _, _) => DataType.Bool;

    /// <summary>Int64 outputs (shapes, sizes, indices).</summary>
    public static readonly TypeRule Int64 = static (_, _, _) => DataType.Int64;

    /// <summary>Cast: the "to" attribute.</summary>
    public static readonly TypeRule CastTo = static (_, n, _) => (DataType)n.GetInt("to", 0);

    /// <summary>ConstantOfShape: the type of its value attribute (float zeros by default).</summary>
    public static readonly TypeRule ConstantOfShape = static (_, n, _) => n.GetAttribute("value")?.AsTensor().DataType ?? DataType.Float;

    /// <summary>Constant: the tensor's type, float for value_float(s), else int64 (value_int(s)).</summary>
    public static readonly TypeRule Constant = static (_, n, _) => n.GetAttribute("value")?.AsTensor().DataType
        ?? (n.GetAttribute("value_float") is not null || n.GetAttribute("value_floats") is not null ? DataType.Float : DataType.Int64);

    /// <summary>The type of input <paramref name="index"/> (Where's branches, CastLike's template, DequantizeLinear's scale).</summary>
    public static TypeRule OfInput(int index) => (f, n, _) => f.InputType(n, index);

    /// <summary><paramref name="type"/> for outputs from <paramref name="firstOutput"/> on, the default type before it.</summary>
    public static TypeRule FromOutput(int firstOutput, DataType type) =>
        (f, n, o) => o >= firstOutput ? type : f.FirstFloatInputType(n);
}
