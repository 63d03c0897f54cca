using Google.Protobuf;
using Onnx.Lora.Bench.Fuzz;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Proto;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.BadInput;

/// <summary>
/// Hostile ONNX files: each gives an <see cref="OnnxSerializationException"/> whose message names the file and the
/// offending tensor / graph, allocates nothing near the declared sizes, and never overflows the stack.
/// </summary>
[TestClass]
public sealed class OnnxBadInputTests
{
    /// <summary>A valid model.onnx (+ model.onnx.data holding 'w', 128 bytes at offset 0) in a fresh folder, and its proto.</summary>
    private static (TempDir Dir, ModelProto Proto) ValidModel()
    {
        var dir = new TempDir();
        using Model model = FuzzSeeds.BuildOnnxModel();
        OnnxWriter.Save(model, dir.File("model.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 64 });
        return (dir, ModelProto.Parser.ParseFrom(File.ReadAllBytes(dir.File("model.onnx"))));
    }

    private static TensorProto Initializer(ModelProto proto, string name) => proto.Graph.Initializer.Single(t => t.Name == name);

    private static void SetExternal(TensorProto tensor, string key, string value)
    {
        StringStringEntryProto? entry = tensor.ExternalData.FirstOrDefault(e => e.Key == key);
        if (entry is null)
        {
            tensor.ExternalData.Add(new StringStringEntryProto { Key = key, Value = value });
        }
        else
        {
            entry.Value = value;
        }
    }

    private static OnnxSerializationException LoadFails(TempDir dir, ModelProto proto, params string[] expected)
    {
        File.WriteAllBytes(dir.File("model.onnx"), proto.ToByteArray());
        return LoadFails(dir.File("model.onnx"), expected);
    }

    private static OnnxSerializationException LoadFails(string path, params string[] expected)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(path).Dispose());
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        StringAssert.Contains(e.Message, Path.GetFileName(path));
        foreach (string s in expected)
        {
            StringAssert.Contains(e.Message, s);
        }

        Assert.IsLessThan(16L << 20, allocated, "a hostile file must not make the reader allocate its declared sizes");
        return e;
    }

    [TestMethod]
    public void Load_ValidSeed_LoadsWithExternalTensor()
    {
        (TempDir dir, _) = ValidModel();
        using (dir)
        {
            using Model model = OnnxReader.Load(dir.File("model.onnx"));
            Tensor w = model.Graph.Initializers["w"].Initializer!;
            Assert.IsTrue(w.IsExternal);
            Assert.AreEqual(31 * 0.25f, w.ToFloat32()[31]);
        }
    }

    [TestMethod]
    public void Load_EmptyFile_ThrowsNoGraph()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("empty.onnx"), []);
        LoadFails(dir.File("empty.onnx"), "no graph");
    }

    [TestMethod]
    public void Load_EveryTruncation_ThrowsOrLoadsNeverCrashes()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            byte[] bytes = proto.ToByteArray();
            int failures = 0;
            for (int length = 0; length < bytes.Length; length++)
            {
                try
                {
                    OnnxReader.Load(bytes.AsMemory(0, length), dir.Path).Dispose();
                }
                catch (OnnxSerializationException)
                {
                    failures++;
                }
            }

            Assert.IsGreaterThan(bytes.Length * 9 / 10, failures, "almost every cut is detected (cuts at a field boundary are valid protobuf)");
        }
    }

    [TestMethod]
    public void Load_HugeDeclaredLength_ThrowsWithoutAllocating()
    {
        using var dir = new TempDir();
        // Field 7 (graph), wire type 2, length 2^31 - 1, followed by 16 bytes.
        byte[] bytes = [0x3A, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, .. new byte[16]];
        File.WriteAllBytes(dir.File("huge.onnx"), bytes);
        LoadFails(dir.File("huge.onnx"));
    }

    [TestMethod]
    public void Load_DimsWhoseProductOverflows_ThrowsNamingTensor()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            TensorProto b = Initializer(proto, "b");
            b.Dims.Clear();
            b.Dims.AddRange([1L << 40, 1L << 40]);
            LoadFails(dir, proto, "'b'", "overflow");
        }
    }

    [TestMethod]
    public void Load_RawDataShorterThanDims_ThrowsNamingTensorAndSizes()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            TensorProto b = Initializer(proto, "b");
            b.Dims.Clear();
            b.Dims.AddRange([1_000_000_000L, 1000]);
            LoadFails(dir, proto, "'b'", "32 bytes", "4000000000000");
        }
    }

    [TestMethod]
    public void Load_UnknownDataType_ThrowsNamingTensor()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            Initializer(proto, "w").DataType = 99;
            LoadFails(dir, proto, "'w'", "data type 99");
        }
    }

    [TestMethod]
    public void Load_NestingBeyondLimit_ThrowsInsteadOfOverflowingTheStack()
    {
        using var dir = new TempDir();
        // 400 nested If bodies = 1,200 message levels (> MaxNestingDepth); read on a 1 MiB stack to prove it is bounded.
        File.WriteAllBytes(dir.File("deep.onnx"), NestedIfModel(400).ToByteArray());
        OnnxSerializationException? error = null;
        RunOnSmallStack(() => error = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(dir.File("deep.onnx")).Dispose()));
        StringAssert.Contains(error!.Message, "deep.onnx");
        StringAssert.Contains(error.Message, "nesting");
    }

    [TestMethod]
    public void Load_NestingTooDeepForTheStack_ThrowsBeforeOverflowing()
    {
        using var dir = new TempDir();
        // 300 levels pass protobuf's limit (900 < 1000) but not the reader's nesting bound (128), checked before the stack runs out.
        File.WriteAllBytes(dir.File("deep.onnx"), NestedIfModel(300).ToByteArray());
        OnnxSerializationException? error = null;
        RunOnSmallStack(() => error = Assert.ThrowsExactly<OnnxSerializationException>(() => OnnxReader.Load(dir.File("deep.onnx")).Dispose()));
        StringAssert.Contains(error!.Message, "deep.onnx");
        StringAssert.Contains(error.Message, "nested too deeply");
    }

    [TestMethod]
    public void Load_NestingWithinLimit_LoadsOnSmallStack()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("deep.onnx"), NestedIfModel(100).ToByteArray());
        int depth = 0;
        RunOnSmallStack(() =>
        {
            using Model model = OnnxReader.Load(dir.File("deep.onnx"));
            for (Onnx.Lora.Ir.Graph? g = model.Graph; g is not null; g = g.Nodes.Count == 0 ? null : g.Nodes[0].Attributes.Values.Select(a => a.Value).OfType<Onnx.Lora.Ir.Graph>().FirstOrDefault())
            {
                depth++;
            }
        });
        Assert.AreEqual(101, depth);
    }

    [TestMethod]
    public void Load_ExternalDataMissing_ThrowsNamingDataFileAndTensor()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            File.Delete(dir.File("model.onnx.data"));
            LoadFails(dir.File("model.onnx"), "model.onnx.data", "'w'", "does not exist");
        }
    }

    [TestMethod]
    public void Load_ExternalDataShort_ThrowsNamingTensorAndSizes()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            File.WriteAllBytes(dir.File("model.onnx.data"), new byte[100]);
            OnnxSerializationException e = LoadFails(dir.File("model.onnx"), "'w'", "too short", "the file has 100");
            StringAssert.Contains(e.Message, "model.onnx.data");
        }
    }

    [TestMethod]
    [DataRow("9223372036854775807", "too short")]
    [DataRow("9223372036854775800", "too short")]
    [DataRow("-1", "not a non-negative integer")]
    [DataRow("12x", "not a non-negative integer")]
    public void Load_ExternalOffsetHostile_ThrowsInsteadOfMappingOutsideTheFile(string offset, string expected)
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            SetExternal(Initializer(proto, "w"), "offset", offset);
            LoadFails(dir, proto, "'w'", expected);
        }
    }

    [TestMethod]
    public void Load_ExternalLengthDisagreesWithDims_ThrowsNamingTensor()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            SetExternal(Initializer(proto, "w"), "length", "64");
            LoadFails(dir, proto, "'w'", "declares 64 bytes", "needs 128");
        }
    }

    [TestMethod]
    public void Load_ExternalRangesOverlap_ThrowsNamingBothTensors()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            TensorProto w2 = Initializer(proto, "w").Clone();
            w2.Name = "w2";
            w2.Dims.Clear();
            w2.Dims.AddRange([4, 4]);
            SetExternal(w2, "offset", "64");
            SetExternal(w2, "length", "64");
            Initializer(proto, "w").Dims[1] = 8; // w stays bytes 0..128
            proto.Graph.Initializer.Add(w2);
            LoadFails(dir, proto, "'w'", "'w2'", "overlap", "model.onnx.data");
        }
    }

    [TestMethod]
    public void Load_ExternalRangesIdentical_LoadsAsSharedBytes()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            TensorProto tied = Initializer(proto, "w").Clone();
            tied.Name = "w_tied";
            proto.Graph.Initializer.Add(tied);
            File.WriteAllBytes(dir.File("model.onnx"), proto.ToByteArray());
            using Model model = OnnxReader.Load(dir.File("model.onnx"));
            CollectionAssert.AreEqual(model.Graph.Initializers["w"].Initializer!.ToFloat32(), model.Graph.Initializers["w_tied"].Initializer!.ToFloat32());
        }
    }

    [TestMethod]
    [DataRow("/etc/hostname", "absolute")]
    [DataRow("../model.onnx.data", "escapes")]
    [DataRow("sub/../../x.data", "escapes")]
    public void Load_ExternalLocationOutsideFolder_Throws(string location, string expected)
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            SetExternal(Initializer(proto, "w"), "location", location);
            LoadFails(dir, proto, "'w'", expected, location);
        }
    }

    [TestMethod]
    public void Load_ExternalLocationSymlinkOutOfFolder_Throws()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        using (var outside = new TempDir())
        {
            File.Copy(dir.File("model.onnx.data"), outside.File("secret.data"));
            File.CreateSymbolicLink(dir.File("link.data"), outside.File("secret.data"));
            SetExternal(Initializer(proto, "w"), "location", "link.data");
            LoadFails(dir, proto, "'w'", "link", "outside the model's folder");
        }
    }

    [TestMethod]
    public void Load_GraphWithCycle_ThrowsNamingFileAndNode()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            // c1 reads c2's output and c2 reads c1's: no order can run them.
            proto.Graph.Node.Add(new NodeProto { Name = "c1", OpType = "Relu", Input = { "c2_out" }, Output = { "c1_out" } });
            proto.Graph.Node.Add(new NodeProto { Name = "c2", OpType = "Relu", Input = { "c1_out" }, Output = { "c2_out" } });
            OnnxSerializationException e = LoadFails(dir, proto, "model.onnx", "cycle");
            StringAssert.Matches(e.Message, new System.Text.RegularExpressions.Regex("'c[12]'"));

            // Through the CLI: the model's exit code and one line naming the file (issue 15: "a graph cycle names no file").
            (int code, _, string error) = Onnx.Lora.Tests.Cli.CliRunner.Run("inject", dir.File("model.onnx"), "-o", dir.File("out.onnx"));
            Assert.AreEqual(4, code, error);
            StringAssert.Contains(error, "model.onnx");
            Assert.IsFalse(File.Exists(dir.File("out.onnx")));
        }
    }

    [TestMethod]
    public void Inspect_HundredThousandCharLocation_PrintsOneShortLine()
    {
        (TempDir dir, ModelProto proto) = ValidModel();
        using (dir)
        {
            string location = new string('a', 100_000) + ".data";
            SetExternal(Initializer(proto, "w"), "location", location);
            File.WriteAllBytes(dir.File("model.onnx"), proto.ToByteArray());

            (int code, _, string error) = Onnx.Lora.Tests.Cli.CliRunner.Run("inspect", dir.File("model.onnx"));

            Assert.AreEqual(4, code, error[..Math.Min(error.Length, 500)]);
            Assert.AreEqual(1, error.TrimEnd().Split('\n').Length);
            Assert.IsLessThan(2_100, error.Length, "the 100,000-char location is abbreviated (it was a 200 KB line)");
            StringAssert.Contains(error, "model.onnx");
            StringAssert.Contains(error, " chars)");
        }
    }

    private static ModelProto NestedIfModel(int depth)
    {
        var inner = new GraphProto { Name = "g" + depth };
        for (int level = depth - 1; level >= 0; level--)
        {
            var node = new NodeProto { OpType = "If", Name = "if" + level };
            node.Attribute.Add(new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = inner });
            inner = new GraphProto { Name = "g" + level };
            inner.Node.Add(node);
        }

        var model = new ModelProto { IrVersion = 8, Graph = inner };
        model.OpsetImport.Add(new OperatorSetIdProto { Version = 17 });
        return model;
    }

    private static void RunOnSmallStack(Action action)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                action();
            }
            catch (Exception e) when (e is AssertFailedException or ToolchainException)
            {
                failure = e;
            }
        }, maxStackSize: 1 << 20);
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw failure;
        }
    }
}
