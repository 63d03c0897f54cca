using Google.Protobuf;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Proto;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

[TestClass]
public sealed class SerializationTests
{
    private static byte[] UnknownVarint(int field, long value)
    {
        using var ms = new MemoryStream();
        using (var output = new CodedOutputStream(ms, leaveOpen: true))
        {
            output.WriteTag(field, WireFormat.WireType.Varint);
            output.WriteInt64(value);
        }

        return ms.ToArray();
    }

    private static Model TinyModel()
    {
        var b = new GraphBuilder("tiny");
        Value x = b.Input("x", DataType.Float, "batch", 4);
        Value w = b.Floats("w", [4, 2], [1, 2, 3, 4, 5, 6, 7, 8]);
        b.Output(b.MatMul(x, w, "mm"), "y", DataType.Float, "batch", 2);
        return b.Model;
    }

    [TestMethod]
    public void Load_UnknownFieldsAtEveryLevel_SurviveSave()
    {
        ModelProto proto = ModelProto.Parser.ParseFrom(OnnxWriter.ToBytes(TinyModel()));
        proto.MergeFrom(UnknownVarint(900, 1));
        proto.Graph.MergeFrom(UnknownVarint(901, 2));
        proto.Graph.Node[0].MergeFrom(UnknownVarint(902, 3));
        proto.Graph.Initializer[0].MergeFrom(UnknownVarint(903, 4));
        proto.Graph.Input[0].MergeFrom(UnknownVarint(904, 5));
        using var temp = new TempDir();
        File.WriteAllBytes(temp.File("in.onnx"), proto.ToByteArray());

        using Model model = OnnxReader.Load(temp.File("in.onnx"));
        OnnxWriter.Save(model, temp.File("out.onnx"));

        ModelProto back = ModelProto.Parser.ParseFrom(File.ReadAllBytes(temp.File("out.onnx")));
        Assert.AreEqual(proto, back, "the whole message, unknown fields included, must survive");
    }

    [TestMethod]
    public void Load_TypedFieldTensors_ReadAsRawBytes()
    {
        var proto = new TensorProto { Name = "h", DataType = (int)DataType.Float16 };
        proto.Dims.Add(2);
        proto.Int32Data.Add([BitConverter.HalfToUInt16Bits((Half)1.5f), BitConverter.HalfToUInt16Bits((Half)(-2f))]);
        var f = new TensorProto { Name = "f", DataType = (int)DataType.Float };
        f.Dims.Add(3);
        f.FloatData.Add([1f, 2f, 3f]);
        ModelProto model = ModelProto.Parser.ParseFrom(OnnxWriter.ToBytes(TinyModel()));
        model.Graph.Initializer.Add(proto);
        model.Graph.Initializer.Add(f);

        using Model loaded = OnnxReader.Load(model.ToByteArray());
        CollectionAssert.AreEqual(new[] { 1.5f, -2f }, loaded.Graph.Initializers["h"].Initializer!.ToFloat32());
        CollectionAssert.AreEqual(new[] { 1f, 2f, 3f }, loaded.Graph.Initializers["f"].Initializer!.ToArray<float>());
    }

    [TestMethod]
    public void Save_SingleFileThenKeep_RoundTripsExternalData()
    {
        using var temp = new TempDir();
        using Model model = TinyModel();
        OnnxWriter.Save(model, temp.File("a.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 });
        Assert.IsTrue(File.Exists(temp.File("a.onnx.data")));

        using Model a = OnnxReader.Load(temp.File("a.onnx"));
        Assert.IsTrue(a.Graph.Initializers["w"].Initializer!.IsExternal);
        OnnxWriter.Save(a, temp.File("b.onnx"), new SaveOptions { ExternalData = ExternalDataMode.Keep });
        Assert.IsFalse(File.Exists(temp.File("b.onnx.data")), "keep mode must reference the existing data file");
        using Model b = OnnxReader.Load(temp.File("b.onnx"));
        CollectionAssert.AreEqual(new float[] { 1, 2, 3, 4, 5, 6, 7, 8 }, b.Graph.Initializers["w"].Initializer!.ToArray<float>());

        Dictionary<string, float[]> expected = OrtRunner.Run(temp.File("a.onnx"));
        Dictionary<string, float[]> actual = OrtRunner.Run(temp.File("b.onnx"));
        CollectionAssert.AreEqual(expected["y"], actual["y"]);
    }

    [TestMethod]
    public void Save_OverItsOwnDataFile_KeepsLoadedModelReadable()
    {
        using var temp = new TempDir();
        using (Model model = TinyModel())
        {
            OnnxWriter.Save(model, temp.File("m.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 });
        }

        using Model loaded = OnnxReader.Load(temp.File("m.onnx"));
        loaded.Graph.Initializers.Add(new Value("extra"), InMemoryTensor.FromFloats("extra", [300], new float[300]));
        OnnxWriter.Save(loaded, temp.File("m.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 });

        CollectionAssert.AreEqual(new float[] { 1, 2, 3, 4, 5, 6, 7, 8 }, loaded.Graph.Initializers["w"].Initializer!.ToArray<float>());
        using Model again = OnnxReader.Load(temp.File("m.onnx"));
        CollectionAssert.AreEqual(new float[] { 1, 2, 3, 4, 5, 6, 7, 8 }, again.Graph.Initializers["w"].Initializer!.ToArray<float>());
    }

    [TestMethod]
    public void Load_TensorPastTwoGiBInSparseDataFile_ReadsAndKeepsOffset()
    {
        using var temp = new TempDir();
        const long offset = (2L << 30) + 4096;
        using (var fs = new FileStream(temp.File("big.data"), FileMode.CreateNew))
        {
            fs.SetLength(offset + 16);
            fs.Position = offset;
            fs.Write(BitConverter.GetBytes(1.25f));
            fs.Write(BitConverter.GetBytes(-3f));
            fs.Write(BitConverter.GetBytes(7f));
            fs.Write(BitConverter.GetBytes(0.5f));
        }

        ModelProto proto = ModelProto.Parser.ParseFrom(OnnxWriter.ToBytes(TinyModel()));
        TensorProto w = proto.Graph.Initializer[0];
        w.RawData = ByteString.Empty;
        w.Dims.Clear();
        w.Dims.Add([2, 2]);
        w.DataLocation = TensorProto.Types.DataLocation.External;
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "big.data" });
        w.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        w.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = "16" });
        File.WriteAllBytes(temp.File("big.onnx"), proto.ToByteArray());

        using Model model = OnnxReader.Load(temp.File("big.onnx"));
        CollectionAssert.AreEqual(new[] { 1.25f, -3f, 7f, 0.5f }, model.Graph.Initializers["w"].Initializer!.ToArray<float>());
        OnnxWriter.Save(model, temp.File("again.onnx"), new SaveOptions { ExternalData = ExternalDataMode.Keep });
        ModelProto back = ModelProto.Parser.ParseFrom(File.ReadAllBytes(temp.File("again.onnx")));
        Assert.AreEqual(offset.ToString(System.Globalization.CultureInfo.InvariantCulture), back.Graph.Initializer[0].ExternalData.Single(e => e.Key == "offset").Value);
    }

    [TestMethod]
    [DataRow("../outside.data", "escapes")]
    [DataRow("/etc/passwd", "absolute")]
    [DataRow("missing.data", "does not exist")]
    [DataRow("short.data", "too short")]
    public void Load_BadExternalData_ThrowsNamingFileAndTensor(string location, string expected)
    {
        using var temp = new TempDir();
        string dir = Path.Combine(temp.Path, "model");
        Directory.CreateDirectory(dir);
        File.WriteAllBytes(Path.Combine(temp.Path, "outside.data"), new byte[64]);
        File.WriteAllBytes(Path.Combine(dir, "short.data"), new byte[8]);
        ModelProto proto = ModelProto.Parser.ParseFrom(OnnxWriter.ToBytes(TinyModel()));
        TensorProto w = proto.Graph.Initializer[0];
        w.RawData = ByteString.Empty;
        w.DataLocation = TensorProto.Types.DataLocation.External;
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        string path = Path.Combine(dir, "m.onnx");
        File.WriteAllBytes(path, proto.ToByteArray());

        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(path));
        StringAssert.Contains(e.Message, expected);
        StringAssert.Contains(e.Message, "'w'");
    }

    [TestMethod]
    public void Load_TruncatedFile_ThrowsNamingFile()
    {
        using var temp = new TempDir();
        byte[] bytes = OnnxWriter.ToBytes(TinyModel());
        File.WriteAllBytes(temp.File("cut.onnx"), bytes[..(bytes.Length / 2)]);
        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(temp.File("cut.onnx")));
        StringAssert.Contains(e.Message, "cut.onnx");
    }

    [TestMethod]
    public void Load_GarbageBytes_ThrowsNamingFile()
    {
        using var temp = new TempDir();
        var rng = new Random(20261125);
        byte[] junk = new byte[4096];
        rng.NextBytes(junk);
        File.WriteAllBytes(temp.File("junk.onnx"), junk);
        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(temp.File("junk.onnx")));
        StringAssert.Contains(e.Message, "junk.onnx");
    }

    [TestMethod]
    public void Save_WhenWriteFails_LeavesNoFileAndKeepsOld()
    {
        using var temp = new TempDir();
        string path = temp.File("m.onnx");
        File.WriteAllText(path, "previous");
        using Model model = TinyModel();
        model.Graph.Nodes[0].SetAttribute(Attr.Opaque("bad", AttrType.Float, [ReadOnlyMemory<byte>.Empty]));

        Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxWriter.Save(model, path));
        Assert.AreEqual("previous", File.ReadAllText(path));
        CollectionAssert.AreEqual(new[] { "m.onnx" }, Directory.GetFiles(temp.Path).Select(Path.GetFileName).ToArray());
    }

    [TestMethod]
    public void Tensor_Int4Packed_ReadsSignedAndUnsignedNibbles()
    {
        // Low nibble first: bytes 0x21 0xF8 hold 1, 2, 8, 15.
        var u4 = new InMemoryTensor("u", DataType.UInt4, [4], new byte[] { 0x21, 0xF8 });
        var s4 = new InMemoryTensor("s", DataType.Int4, [4], new byte[] { 0x21, 0xF8 });
        CollectionAssert.AreEqual(new[] { 1f, 2f, 8f, 15f }, u4.ToFloat32());
        CollectionAssert.AreEqual(new[] { 1f, 2f, -8f, -1f }, s4.ToFloat32());
        Assert.AreEqual(2, u4.AsSpan<byte>().Length);
    }

    [TestMethod]
    public void Tensor_BFloat16_RoundTripsThroughFloat32()
    {
        float[] values = [1f, -2.5f, 3.140625f, 65280f];
        byte[] raw = TensorConvert.FromFloat32(values, DataType.BFloat16);
        var t = new InMemoryTensor("b", DataType.BFloat16, [4], raw);
        CollectionAssert.AreEqual(values, t.ToFloat32());
    }

    [TestMethod]
    public void InMemoryTensor_WrongByteCount_ThrowsNamingTensor()
    {
        var e = Assert.ThrowsExactly<GraphValidationException>(() => new InMemoryTensor("w", DataType.Float, [2, 2], new byte[12]));
        StringAssert.Contains(e.Message, "'w'");
    }
}
