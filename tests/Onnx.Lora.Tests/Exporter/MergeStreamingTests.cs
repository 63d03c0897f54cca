using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>The buffered paths a streamed merge uses: positioned reads of external data, pooled deferred tensors.</summary>
[TestClass]
public sealed class MergeStreamingTests
{
    [TestMethod]
    public void ExternalTensorCopyTo_SingleFileModel_ReadsTheBytesThatWereSaved()
    {
        using var dir = new TempDir();
        Model source = LoraTestModels.Base();
        byte[] expected = source.Graph.Initializers["qkv.weight"].Initializer!.GetBytes().ToArray();
        OnnxWriter.Save(source, dir.File("m.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 16 });

        using Model loaded = OnnxReader.Load(dir.File("m.onnx"));
        Tensor external = loaded.Graph.Initializers["qkv.weight"].Initializer!;
        Assert.IsInstanceOfType<ExternalTensor>(external);
        var read = new byte[external.ByteLength];
        external.CopyTo(read);

        CollectionAssert.AreEqual(expected, read);
        Assert.ThrowsExactly<ArgumentException>(() => external.CopyTo(new byte[external.ByteLength - 1]));
    }

    [TestMethod]
    public void DeferredTensorWriteTo_FillProducer_WritesExactlyTheFilledBytes()
    {
        int calls = 0;
        var tensor = new DeferredTensor("t", DataType.Float16, [3, 5], destination =>
        {
            calls++;
            Assert.AreEqual(30, destination.Length, "the pooled buffer is cut to the tensor's bytes");
            for (int i = 0; i < destination.Length; i++)
            {
                destination[i] = (byte)(i * 7);
            }
        });
        using var stream = new MemoryStream();
        tensor.WriteTo(stream);

        byte[] expected = Enumerable.Range(0, 30).Select(i => (byte)(i * 7)).ToArray();
        CollectionAssert.AreEqual(expected, stream.ToArray());
        CollectionAssert.AreEqual(expected, tensor.GetBytes().ToArray());
        Assert.AreEqual(2, calls);
    }

    [TestMethod]
    [DataRow(DataType.Float16)]
    [DataRow(DataType.BFloat16)]
    public void TensorConvertFromFloat32_IntoSpan_RoundsToNearestEven(DataType type)
    {
        var rng = new Random(3);
        float[] values = [.. Enumerable.Range(0, 257).Select(_ => (float)((rng.NextDouble() - 0.5) * 1e3)), 1f + (1f / 2048), 65504f, -0f];
        var bytes = new byte[values.Length * 2];
        TensorConvert.FromFloat32(values, type, bytes);
        for (int i = 0; i < values.Length; i++)
        {
            ushort bits = BitConverter.ToUInt16(bytes, i * 2);
            ushort expected = type == DataType.Float16 ? BitConverter.HalfToUInt16Bits((Half)values[i]) : Bf16RoundNearestEven(values[i]);
            Assert.AreEqual(expected, bits, $"value {values[i]} as {type}");
        }

        Assert.ThrowsExactly<ArgumentException>(() => TensorConvert.FromFloat32(values, type, new byte[bytes.Length + 2]));
    }

    [TestMethod]
    public void Merge_Fp16ExternalBase_StreamedWeightMatchesMergeComputedInDouble()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
        Model lora = LoraTestModels.WithLora(LoraTestModels.Base(DataType.Float16), weights, LoraPlacement.Initializers);
        float[] w0 = lora.Graph.Initializers["qkv.weight"].Initializer!.ToFloat32();
        string loraPath = dir.File("lora.onnx");
        OnnxWriter.Save(lora, loraPath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 16 });

        LoraMerger.Merge(loraPath, dir.File("merged.onnx"));

        using Model merged = OnnxReader.Load(dir.File("merged.onnx"));
        Tensor weight = merged.Graph.Initializers["qkv.weight"].Initializer!;
        Assert.IsInstanceOfType<ExternalTensor>(weight, "the merged weight is streamed into the output's data file");
        float[] got = weight.ToFloat32();
        LoraModuleWeights m = weights.Modules[0];
        for (int i = 0; i < 16; i++)
        {
            for (int j = 0; j < 48; j++)
            {
                double expected = w0[(i * 48) + j] + (m.Scale * Enumerable.Range(0, 4).Sum(k => (double)m.A[(i * 4) + k] * m.B[(k * 48) + j]));
                Assert.AreEqual(expected, got[(i * 48) + j], (Math.Abs(expected) * 1e-3) + 1e-7, $"fp16 merged W[{i},{j}] (rounded once: ≤ half an ulp of fp16)");
            }
        }
    }

    [TestMethod]
    public void Merge_WithProgress_ReportsEveryTensorUpToTheMergedModelsBytes()
    {
        using var dir = new TempDir();
        LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
        Model lora = LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.Initializers);
        string loraPath = dir.File("lora.onnx");
        OnnxWriter.Save(lora, loraPath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 16 });
        var reports = new List<SaveProgress>();

        LoraMerger.Merge(loraPath, dir.File("merged.onnx"), options: new MergeOptions { Progress = new Recorder(reports) });

        using Model merged = OnnxReader.Load(dir.File("merged.onnx"));
        long total = merged.Graph.Initializers.Values.Sum(v => v.Initializer!.ByteLength);
        Assert.IsGreaterThan(merged.Graph.Initializers.Count, reports.Count, "one report per tensor, then the final one");
        Assert.IsTrue(reports.All(r => r.TotalBytes == total), "the total is the merged model's tensor bytes");
        Assert.IsTrue(reports.Zip(reports.Skip(1)).All(p => p.First.BytesWritten <= p.Second.BytesWritten), "monotonic");
        Assert.AreEqual(new SaveProgress(total, total), reports[^1]);
    }

    // Synchronous, unlike Progress<T> (which posts to a context): reports are seen in order, on the saving thread.
    private sealed class Recorder(List<SaveProgress> reports) : IProgress<SaveProgress>
    {
        public void Report(SaveProgress value) => reports.Add(value);
    }

    // Independent of TensorConvert: round-to-nearest-even on the upper 16 bits of the float's bit pattern.
    private static ushort Bf16RoundNearestEven(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        uint lsb = (bits >> 16) & 1;
        return (ushort)((bits + 0x7FFF + lsb) >> 16);
    }
}
