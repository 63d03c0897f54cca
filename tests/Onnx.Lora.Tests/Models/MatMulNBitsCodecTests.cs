using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Ir.Quantization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

[TestClass]
public sealed class MatMulNBitsCodecTests
{
    [TestMethod]
    [DataRow(64, 24, 32)]
    [DataRow(40, 7, 16)] // K not a multiple of the block: padded last block, odd zero-point count per column
    [DataRow(96, 5, 32)]
    public void Quantize_OrtMatMulNBits_EqualsFloatMatMulOnDequantizedWeight(int k, int n, int blockSize)
    {
        var rng = new Random(20261125);
        float[] w = Enumerable.Range(0, k * n).Select(_ => (float)((rng.NextDouble() * 2) - 1)).ToArray();
        float[] x = Enumerable.Range(0, 3 * k).Select(_ => (float)((rng.NextDouble() * 2) - 1)).ToArray();
        MatMulNBitsWeights q = MatMulNBitsCodec.Quantize(w, k, n, blockSize);
        var deq = new float[k * n];
        MatMulNBitsCodec.Dequantize(q, deq);

        var b = new GraphBuilder("g", 17);
        b.Model.RequireOpset("com.microsoft", 1);
        Value a = b.Input("x", DataType.Float, 3, k);
        Value y = b.Op("MatMulNBits", [a, b.Initializer(new InMemoryTensor("B", DataType.UInt8, q.PackedDims, q.Packed)), b.Floats("scales", [q.Scales.Length], q.Scales),
            b.Initializer(new InMemoryTensor("zp", DataType.UInt8, [q.ZeroPoints.Length], q.ZeroPoints))],
            [Attr.Int("K", k), Attr.Int("N", n), Attr.Int("bits", 4), Attr.Int("block_size", blockSize)], "com.microsoft");
        b.Output(y, "y", DataType.Float, 3, n);
        using var dir = new TempDir();
        OnnxWriter.Save(b.Model, dir.File("m.onnx"));
        using var session = new InferenceSession(dir.File("m.onnx"));
        using var input = OrtValue.CreateTensorValueFromMemory(x, [3, k]);
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, ["x"], [input], ["y"]);
        float[] actual = outputs[0].GetTensorDataAsSpan<float>().ToArray();

        // Independent float MatMul in double precision on the dequantized weight.
        var expected = new float[3 * n];
        for (int i = 0; i < 3; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int t = 0; t < k; t++)
                {
                    sum += (double)x[(i * k) + t] * deq[(t * n) + j];
                }

                expected[(i * n) + j] = (float)sum;
            }
        }

        float diff = OrtRunner.MaxAbsDiff(expected, actual);
        Assert.IsTrue(diff <= 1e-5f, $"max |diff| {diff}");
    }

    [TestMethod]
    public void Dequantize_AfterQuantize_ErrorWithinHalfAStepPerBlock()
    {
        const int K = 64;
        const int N = 9;
        var rng = new Random(7);
        float[] w = Enumerable.Range(0, K * N).Select(_ => (float)(rng.NextDouble() * 3) - 1).ToArray();
        MatMulNBitsWeights q = MatMulNBitsCodec.Quantize(w, K, N, 32);
        var deq = new float[K * N];
        MatMulNBitsCodec.Dequantize(q, deq);
        for (int row = 0; row < K; row++)
        {
            for (int col = 0; col < N; col++)
            {
                float scale = q.Scales[(col * q.BlocksPerColumn) + (row / 32)];
                Assert.IsTrue(MathF.Abs(w[(row * N) + col] - deq[(row * N) + col]) <= (scale / 2) + 1e-6f, $"[{row},{col}]");
            }
        }
    }

    [TestMethod]
    public void Quantize_AllZeroBlock_DequantizesToExactZeros()
    {
        var deq = new float[32 * 2];
        MatMulNBitsCodec.Dequantize(MatMulNBitsCodec.Quantize(new float[32 * 2], 32, 2), deq);
        Assert.IsTrue(deq.All(v => v == 0f));
    }

    [TestMethod]
    public void Dequantize_WrongScaleCount_Throws()
    {
        MatMulNBitsWeights q = MatMulNBitsCodec.Quantize(new float[32 * 2], 32, 2);
        var e = Assert.ThrowsExactly<ArgumentException>(() => MatMulNBitsCodec.Dequantize(q.Packed, q.Scales.AsSpan(0, 1), q.ZeroPoints, 32, 2, 32, new float[64]));
        StringAssert.Contains(e.Message, "scales");
    }

    [TestMethod]
    public void Quantize_BadBlockSize_Throws() =>
        Assert.ThrowsExactly<ArgumentException>(() => MatMulNBitsCodec.Quantize(new float[48 * 2], 48, 2, 24));
}
