using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Onnx.Lora.Ir;

/// <summary>Conversions between raw tensor bytes of each element type and float32.</summary>
public static class TensorConvert
{
    /// <summary>Decodes raw little-endian <paramref name="source"/> of <paramref name="type"/> into <paramref name="destination"/>.</summary>
    /// <exception cref="NotSupportedException">The type has no float meaning here (strings, complex, fp8).</exception>
    public static void ToFloat32(ReadOnlySpan<byte> source, DataType type, Span<float> destination)
    {
        int n = destination.Length;
        switch (type)
        {
            case DataType.Float:
                MemoryMarshal.Cast<byte, float>(source)[..n].CopyTo(destination);
                break;
            case DataType.Float16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(source)[..n], destination);
                break;
            case DataType.BFloat16:
                ReadOnlySpan<ushort> bf = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < n; i++)
                {
                    destination[i] = BitConverter.Int32BitsToSingle(bf[i] << 16);
                }

                break;
            case DataType.Double:
                ReadOnlySpan<double> d = MemoryMarshal.Cast<byte, double>(source);
                for (int i = 0; i < n; i++)
                {
                    destination[i] = (float)d[i];
                }

                break;
            case DataType.Int8:
                for (int i = 0; i < n; i++)
                {
                    destination[i] = (sbyte)source[i];
                }

                break;
            case DataType.UInt8:
            case DataType.Bool:
                for (int i = 0; i < n; i++)
                {
                    destination[i] = source[i];
                }

                break;
            case DataType.Int32:
                ReadOnlySpan<int> i32 = MemoryMarshal.Cast<byte, int>(source);
                for (int i = 0; i < n; i++)
                {
                    destination[i] = i32[i];
                }

                break;
            case DataType.Int64:
                ReadOnlySpan<long> i64 = MemoryMarshal.Cast<byte, long>(source);
                for (int i = 0; i < n; i++)
                {
                    destination[i] = i64[i];
                }

                break;
            case DataType.UInt4:
                for (int i = 0; i < n; i++)
                {
                    destination[i] = UnpackUInt4(source, i);
                }

                break;
            case DataType.Int4:
                for (int i = 0; i < n; i++)
                {
                    int u = UnpackUInt4(source, i);
                    destination[i] = u >= 8 ? u - 16 : u;
                }

                break;
            default:
                throw new NotSupportedException($"Element type {type} cannot be converted to float32.");
        }
    }

    /// <summary>Encodes float32 values as raw bytes of <paramref name="type"/> (float, float16, bfloat16), rounding to nearest even.</summary>
    public static byte[] FromFloat32(ReadOnlySpan<float> source, DataType type)
    {
        var bytes = new byte[source.Length * (type == DataType.Float ? 4 : 2)];
        FromFloat32(source, type, bytes);
        return bytes;
    }

    /// <summary>
    /// Encodes float32 values into <paramref name="destination"/> as raw bytes of <paramref name="type"/> (float,
    /// float16, bfloat16), rounding to nearest even; no allocation.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> does not hold exactly the encoded bytes.</exception>
    public static void FromFloat32(ReadOnlySpan<float> source, DataType type, Span<byte> destination)
    {
        int width = type switch
        {
            DataType.Float => 4,
            DataType.Float16 or DataType.BFloat16 => 2,
            DataType.Double => 8,
            _ => throw new NotSupportedException($"float32 values cannot be encoded as {type}."),
        };
        if (destination.Length != (long)source.Length * width)
        {
            throw new ArgumentException($"{source.Length} {type} values need {(long)source.Length * width} bytes; the destination holds {destination.Length}.", nameof(destination));
        }

        switch (type)
        {
            case DataType.Float:
                MemoryMarshal.AsBytes(source).CopyTo(destination);
                break;
            case DataType.Float16:
                TensorPrimitives.ConvertToHalf(source, MemoryMarshal.Cast<byte, Half>(destination));
                break;
            case DataType.Double:
                for (int i = 0; i < source.Length; i++)
                {
                    BinaryPrimitives.WriteDoubleLittleEndian(destination[(i * 8)..], source[i]);
                }

                break;
            default:
                for (int i = 0; i < source.Length; i++)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(destination[(i * 2)..], ToBFloat16Bits(source[i]));
                }

                break;
        }
    }

    /// <summary>bfloat16 bits of a float, rounded to nearest even (NaN stays NaN).</summary>
    public static ushort ToBFloat16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x40);
        }

        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    /// <summary>Element <paramref name="index"/> of packed 4-bit data (low nibble first), 0..15.</summary>
    public static int UnpackUInt4(ReadOnlySpan<byte> packed, long index)
    {
        byte b = packed[(int)(index >> 1)];
        return (index & 1) == 0 ? b & 0x0F : b >> 4;
    }
}
