namespace Onnx.Lora.Ir;

/// <summary>ONNX tensor element types, numbered as TensorProto.DataType.</summary>
public enum DataType
{
    /// <summary>Not set.</summary>
    Undefined = 0,
    /// <summary>32-bit float.</summary>
    Float = 1,
    /// <summary>Unsigned 8-bit integer.</summary>
    UInt8 = 2,
    /// <summary>Signed 8-bit integer.</summary>
    Int8 = 3,
    /// <summary>Unsigned 16-bit integer.</summary>
    UInt16 = 4,
    /// <summary>Signed 16-bit integer.</summary>
    Int16 = 5,
    /// <summary>Signed 32-bit integer.</summary>
    Int32 = 6,
    /// <summary>Signed 64-bit integer.</summary>
    Int64 = 7,
    /// <summary>UTF-8 string.</summary>
    String = 8,
    /// <summary>Boolean (one byte).</summary>
    Bool = 9,
    /// <summary>IEEE half precision.</summary>
    Float16 = 10,
    /// <summary>64-bit float.</summary>
    Double = 11,
    /// <summary>Unsigned 32-bit integer.</summary>
    UInt32 = 12,
    /// <summary>Unsigned 64-bit integer.</summary>
    UInt64 = 13,
    /// <summary>Two 32-bit floats.</summary>
    Complex64 = 14,
    /// <summary>Two 64-bit floats.</summary>
    Complex128 = 15,
    /// <summary>Brain float 16.</summary>
    BFloat16 = 16,
    /// <summary>8-bit float E4M3FN.</summary>
    Float8E4M3FN = 17,
    /// <summary>8-bit float E4M3FNUZ.</summary>
    Float8E4M3FNUZ = 18,
    /// <summary>8-bit float E5M2.</summary>
    Float8E5M2 = 19,
    /// <summary>8-bit float E5M2FNUZ.</summary>
    Float8E5M2FNUZ = 20,
    /// <summary>Unsigned 4-bit integer, two per byte (low nibble first).</summary>
    UInt4 = 21,
    /// <summary>Signed 4-bit integer, two per byte (low nibble first).</summary>
    Int4 = 22,
    /// <summary>4-bit float E2M1.</summary>
    Float4E2M1 = 23,
    /// <summary>8-bit float E8M0.</summary>
    Float8E8M0 = 24,
    /// <summary>Unsigned 2-bit integer.</summary>
    UInt2 = 25,
    /// <summary>Signed 2-bit integer.</summary>
    Int2 = 26,
}

/// <summary>Sizes and names of <see cref="DataType"/> values.</summary>
public static class DataTypes
{
    /// <summary>Bits one element occupies in raw data (0 for strings and unknown types).</summary>
    public static int BitWidth(this DataType type) => type switch
    {
        DataType.Float or DataType.Int32 or DataType.UInt32 => 32,
        DataType.Double or DataType.Int64 or DataType.UInt64 or DataType.Complex64 => 64,
        DataType.Complex128 => 128,
        DataType.Float16 or DataType.BFloat16 or DataType.Int16 or DataType.UInt16 => 16,
        DataType.UInt8 or DataType.Int8 or DataType.Bool or DataType.Float8E4M3FN or DataType.Float8E4M3FNUZ
            or DataType.Float8E5M2 or DataType.Float8E5M2FNUZ or DataType.Float8E8M0 => 8,
        DataType.UInt4 or DataType.Int4 or DataType.Float4E2M1 => 4,
        DataType.UInt2 or DataType.Int2 => 2,
        _ => 0,
    };

    /// <summary>Bytes that <paramref name="elementCount"/> packed elements occupy (sub-byte types round up).</summary>
    public static long ByteCount(this DataType type, long elementCount)
    {
        int bits = type.BitWidth();
        if (bits == 0)
        {
            throw new NotSupportedException($"Element type {type} has no fixed byte size.");
        }

        return checked((elementCount * bits + 7) / 8);
    }

    /// <summary>True for float types a linear layer can compute in.</summary>
    public static bool IsFloatingPoint(this DataType type) =>
        type is DataType.Float or DataType.Float16 or DataType.BFloat16 or DataType.Double;

    /// <summary>Lower-case short name as ONNX tools print it (float, float16, int64...).</summary>
    public static string ShortName(this DataType type) => type switch
    {
        DataType.Float => "float32",
        DataType.Float16 => "float16",
        DataType.BFloat16 => "bfloat16",
        DataType.Double => "float64",
        _ => type.ToString().ToLowerInvariant(),
    };
}
