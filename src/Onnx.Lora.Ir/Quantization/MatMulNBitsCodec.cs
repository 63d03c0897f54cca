namespace Onnx.Lora.Ir.Quantization;

/// <summary>
/// Blockwise 4-bit weights laid out as ORT's <c>com.microsoft.MatMulNBits</c> reads them, for a MatMul weight
/// W[K, N] (in, out): <see cref="Packed"/> is B [N, K/blockSize, blockSize/2] (per output column n, the K quantized
/// values in order, two per byte, even index in the low nibble); <see cref="Scales"/> is [N * blocks];
/// <see cref="ZeroPoints"/> is uint8 [N * ceil(blocks/2)] (per column, two 4-bit zero points per byte, low nibble
/// first). Dequantized: W[k, n] = (q[n, k] − zp[n, k / blockSize]) · scale[n, k / blockSize].
/// </summary>
/// <param name="K">Input features.</param>
/// <param name="N">Output features.</param>
/// <param name="BlockSize">Quantization block along K (a power of two, at least 16).</param>
/// <param name="Packed">The B input (uint8), [N, BlocksPerColumn, BlockSize / 2] flattened.</param>
/// <param name="Scales">The scales input, [N * BlocksPerColumn].</param>
/// <param name="ZeroPoints">The zero_points input (uint8), [N * ceil(BlocksPerColumn / 2)].</param>
public sealed record MatMulNBitsWeights(int K, int N, int BlockSize, byte[] Packed, float[] Scales, byte[] ZeroPoints)
{
    /// <summary>Bits per weight (only 4 is supported).</summary>
    public const int Bits = 4;

    /// <summary>Blocks per output column: ceil(K / BlockSize).</summary>
    public int BlocksPerColumn => (K + BlockSize - 1) / BlockSize;

    /// <summary>Dims of the B input: [N, BlocksPerColumn, BlockSize / 2].</summary>
    public long[] PackedDims => [N, BlocksPerColumn, BlockSize / 2];
}

/// <summary>Quantizes float MatMul weights to ORT's MatMulNBits int4 layout and dequantizes them back.</summary>
public static class MatMulNBitsCodec
{
    /// <summary>Default block size (ORT GenAI's model builder uses 32).</summary>
    public const int DefaultBlockSize = 32;

    private const int MaxLevel = 15;

    /// <summary>
    /// Quantizes <paramref name="weight"/> W[K, N] (MatMul layout, row-major) asymmetrically per block of
    /// <paramref name="blockSize"/> values along K: each block's range (widened to include 0) maps onto 0..15.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes do not match or the block size is not a power of two ≥ 16.</exception>
    public static MatMulNBitsWeights Quantize(ReadOnlySpan<float> weight, int k, int n, int blockSize = DefaultBlockSize)
    {
        ValidateSizes(weight.Length, k, n, blockSize);
        int blocks = (k + blockSize - 1) / blockSize;
        int zpStride = (blocks + 1) / 2;
        var packed = new byte[(long)n * blocks * (blockSize / 2)];
        var scales = new float[(long)n * blocks];
        var zeroPoints = new byte[(long)n * zpStride];
        for (int col = 0; col < n; col++)
        {
            for (int blk = 0; blk < blocks; blk++)
            {
                int start = blk * blockSize;
                int end = Math.Min(k, start + blockSize);
                float min = 0f;
                float max = 0f;
                for (int row = start; row < end; row++)
                {
                    float v = weight[(row * n) + col];
                    min = MathF.Min(min, v);
                    max = MathF.Max(max, v);
                }

                // An all-zero block gets scale 1 so that dequantization stays exact (q = zp gives 0).
                float scale = max > min ? (max - min) / MaxLevel : 1f;
                int zp = Math.Clamp((int)MathF.Round(-min / scale), 0, MaxLevel);
                scales[(col * blocks) + blk] = scale;
                SetNibble(zeroPoints, ((long)col * zpStride * 2) + blk, zp);
                long blobStart = ((long)col * blocks + blk) * blockSize;
                for (int row = start; row < end; row++)
                {
                    int q = Math.Clamp((int)MathF.Round(weight[(row * n) + col] / scale) + zp, 0, MaxLevel);
                    SetNibble(packed, blobStart + (row - start), q);
                }

                // Padding past K stays at the zero point so that a reader that ignores K still gets zeros.
                for (int row = end; row < start + blockSize; row++)
                {
                    SetNibble(packed, blobStart + (row - start), zp);
                }
            }
        }

        return new MatMulNBitsWeights(k, n, blockSize, packed, scales, zeroPoints);
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> W[K, N] symmetrically per block, for MatMulNBits nodes WITHOUT a zero_points
    /// input (ORT then uses 8): scale = max|w| / 7 so q − 8 spans −7..7 and no value is clipped (round-to-nearest
    /// error ≤ scale / 2). <see cref="MatMulNBitsWeights.ZeroPoints"/> holds 8 everywhere, so dequantizing with or
    /// without it gives the same values.
    /// </summary>
    /// <exception cref="ArgumentException">Sizes do not match or the block size is not a power of two ≥ 16.</exception>
    public static MatMulNBitsWeights QuantizeSymmetric(ReadOnlySpan<float> weight, int k, int n, int blockSize = DefaultBlockSize)
    {
        ValidateSizes(weight.Length, k, n, blockSize);
        const int zp = 8;
        int blocks = (k + blockSize - 1) / blockSize;
        int zpStride = (blocks + 1) / 2;
        var packed = new byte[(long)n * blocks * (blockSize / 2)];
        var scales = new float[(long)n * blocks];
        var zeroPoints = new byte[(long)n * zpStride];
        Array.Fill(zeroPoints, (byte)((zp << 4) | zp));
        for (int col = 0; col < n; col++)
        {
            for (int blk = 0; blk < blocks; blk++)
            {
                int start = blk * blockSize;
                int end = Math.Min(k, start + blockSize);
                float amax = 0f;
                for (int row = start; row < end; row++)
                {
                    amax = MathF.Max(amax, MathF.Abs(weight[(row * n) + col]));
                }

                float scale = amax > 0 ? amax / 7f : 1f;
                scales[(col * blocks) + blk] = scale;
                long blobStart = ((long)col * blocks + blk) * blockSize;
                for (int row = start; row < start + blockSize; row++)
                {
                    int q = row < end ? Math.Clamp((int)MathF.Round(weight[(row * n) + col] / scale) + zp, 0, MaxLevel) : zp;
                    SetNibble(packed, blobStart + (row - start), q);
                }
            }
        }

        return new MatMulNBitsWeights(k, n, blockSize, packed, scales, zeroPoints);
    }

    /// <summary>Dequantizes into <paramref name="destination"/> W[K, N] (MatMul layout, row-major).</summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is not K × N long.</exception>
    public static void Dequantize(MatMulNBitsWeights weights, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(weights);
        Dequantize(weights.Packed, weights.Scales, weights.ZeroPoints, weights.K, weights.N, weights.BlockSize, destination);
    }

    /// <summary>
    /// Dequantizes raw MatMulNBits inputs into <paramref name="destination"/> W[K, N]. An empty
    /// <paramref name="zeroPoints"/> means ORT's default zero point 8.
    /// </summary>
    /// <exception cref="ArgumentException">A span's length does not match K, N and the block size.</exception>
    public static void Dequantize(ReadOnlySpan<byte> packed, ReadOnlySpan<float> scales, ReadOnlySpan<byte> zeroPoints, int k, int n, int blockSize, Span<float> destination)
    {
        ValidateSizes(destination.Length, k, n, blockSize);
        int blocks = (k + blockSize - 1) / blockSize;
        int zpStride = (blocks + 1) / 2;
        Expect(packed.Length, (long)n * blocks * (blockSize / 2), "packed weights");
        Expect(scales.Length, (long)n * blocks, "scales");
        if (!zeroPoints.IsEmpty)
        {
            Expect(zeroPoints.Length, (long)n * zpStride, "zero points");
        }

        for (int col = 0; col < n; col++)
        {
            for (int blk = 0; blk < blocks; blk++)
            {
                float scale = scales[(col * blocks) + blk];
                int zp = zeroPoints.IsEmpty ? 8 : GetNibble(zeroPoints, ((long)col * zpStride * 2) + blk);
                long blobStart = ((long)col * blocks + blk) * blockSize;
                int start = blk * blockSize;
                int end = Math.Min(k, start + blockSize);
                for (int row = start; row < end; row++)
                {
                    destination[(row * n) + col] = (GetNibble(packed, blobStart + (row - start)) - zp) * scale;
                }
            }
        }
    }

    private static void ValidateSizes(long length, int k, int n, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(k);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        if (blockSize < 16 || (blockSize & (blockSize - 1)) != 0)
        {
            throw new ArgumentException($"MatMulNBits block size {blockSize} must be a power of two of at least 16.", nameof(blockSize));
        }

        Expect(length, (long)k * n, "weight");
    }

    private static void Expect(long actual, long expected, string what)
    {
        if (actual != expected)
        {
            throw new ArgumentException($"MatMulNBits {what} have {actual} elements; expected {expected}.");
        }
    }

    private static int GetNibble(ReadOnlySpan<byte> data, long index) => (data[(int)(index >> 1)] >> (int)((index & 1) * 4)) & 0xF;

    private static void SetNibble(Span<byte> data, long index, int value)
    {
        int shift = (int)((index & 1) * 4);
        ref byte b = ref data[(int)(index >> 1)];
        b = (byte)((b & ~(0xF << shift)) | (value << shift));
    }
}
