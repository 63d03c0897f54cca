using Onnx.Lora.Ir;

namespace Onnx.Lora.Formats;

/// <summary>Maps safetensors dtype strings ("F32", "BF16"...) to ONNX element types and back.</summary>
public static class SafetensorsDataTypes
{
    private static readonly (string Name, DataType Type)[] s_map =
    [
        ("F64", DataType.Double), ("F32", DataType.Float), ("F16", DataType.Float16), ("BF16", DataType.BFloat16),
        ("I64", DataType.Int64), ("I32", DataType.Int32), ("I16", DataType.Int16), ("I8", DataType.Int8),
        ("U64", DataType.UInt64), ("U32", DataType.UInt32), ("U16", DataType.UInt16), ("U8", DataType.UInt8),
        ("BOOL", DataType.Bool), ("F8_E4M3", DataType.Float8E4M3FN), ("F8_E5M2", DataType.Float8E5M2),
    ];

    /// <summary>The ONNX type of a safetensors dtype string, or null when it is not supported.</summary>
    public static DataType? FromName(string name)
    {
        foreach ((string n, DataType t) in s_map)
        {
            if (n == name)
            {
                return t;
            }
        }

        return null;
    }

    /// <summary>The safetensors dtype string of an ONNX element type.</summary>
    /// <exception cref="AdapterFormatException">The type has no safetensors name.</exception>
    public static string ToName(DataType type)
    {
        foreach ((string n, DataType t) in s_map)
        {
            if (t == type)
            {
                return n;
            }
        }

        throw new AdapterFormatException($"Element type {type.ShortName()} cannot be stored in safetensors.");
    }
}
