using System.Buffers.Binary;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>
/// Format-blind mutations of a byte string: bit flips, bytes set to boundary values, truncation, chunk duplication,
/// deletion and overwrite, and 32/64-bit boundary integers written over any position (length and offset fields).
/// </summary>
public static class ByteMutator
{
    private static readonly byte[] s_interestingBytes = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE];

    private static readonly long[] s_interestingIntegers =
    [
        0, 1, -1, 2, 7, 8, 16, 127, 128, 255, 256, 4096, 65535, 65536, int.MaxValue, int.MinValue, int.MaxValue - 7,
        uint.MaxValue, 1L << 32, 1L << 40, long.MaxValue, long.MinValue, long.MaxValue - 7,
    ];

    /// <summary>A boundary integer (also used by the structure-aware mutators).</summary>
    public static long InterestingInteger(Random rng, long near)
    {
        ArgumentNullException.ThrowIfNull(rng);
        return rng.Next(4) switch
        {
            0 => near + rng.Next(-8, 9),
            1 => near * 2,
            _ => s_interestingIntegers[rng.Next(s_interestingIntegers.Length)],
        };
    }

    /// <summary>One random format-blind mutation of <paramref name="data"/> (a new array; the input is not changed).</summary>
    public static byte[] Mutate(byte[] data, Random rng)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(rng);
        if (data.Length == 0)
        {
            return [(byte)rng.Next(256)];
        }

        byte[] result = (byte[])data.Clone();
        switch (rng.Next(9))
        {
            case 0:
                result[rng.Next(result.Length)] ^= (byte)(1 << rng.Next(8));
                return result;
            case 1:
                result[rng.Next(result.Length)] = s_interestingBytes[rng.Next(s_interestingBytes.Length)];
                return result;
            case 2:
                return result.AsSpan(0, rng.Next(result.Length)).ToArray();
            case 3:
            {
                (int start, int length) = Chunk(result.Length, rng);
                int at = rng.Next(result.Length + 1);
                return [.. result.AsSpan(0, at), .. result.AsSpan(start, length), .. result.AsSpan(at)];
            }

            case 4:
            {
                (int start, int length) = Chunk(result.Length, rng);
                return [.. result.AsSpan(0, start), .. result.AsSpan(start + length)];
            }

            case 5:
            {
                (int start, int length) = Chunk(result.Length, rng, max: 8);
                rng.NextBytes(result.AsSpan(start, length));
                return result;
            }

            case 6 when result.Length >= 4:
            {
                int at = rng.Next(result.Length - 3);
                BinaryPrimitives.WriteInt32LittleEndian(result.AsSpan(at), (int)InterestingInteger(rng, BinaryPrimitives.ReadInt32LittleEndian(result.AsSpan(at))));
                return result;
            }

            case 7 when result.Length >= 8:
            {
                int at = rng.Next(result.Length - 7);
                BinaryPrimitives.WriteInt64LittleEndian(result.AsSpan(at), InterestingInteger(rng, BinaryPrimitives.ReadInt64LittleEndian(result.AsSpan(at))));
                return result;
            }

            default:
            {
                // Insert a few random bytes.
                var extra = new byte[rng.Next(1, 9)];
                rng.NextBytes(extra);
                int at = rng.Next(result.Length + 1);
                return [.. result.AsSpan(0, at), .. extra, .. result.AsSpan(at)];
            }
        }
    }

    private static (int Start, int Length) Chunk(int size, Random rng, int max = 256)
    {
        int start = rng.Next(size);
        int length = rng.Next(1, Math.Min(max, size - start) + 1);
        return (start, length);
    }
}
