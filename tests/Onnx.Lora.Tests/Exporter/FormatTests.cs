using System.Buffers.Binary;
using System.Text;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

[TestClass]
public sealed class FormatTests
{
    private static string Adapters(params string[] parts) => Fixtures.Path(["ortgenai-lora-adapters", .. parts]);

    [TestMethod]
    public void Safetensors_WriteThenOpen_RoundTripsBytesAndMetadata()
    {
        using var dir = new TempDir();
        var t = SafetensorsTensor.FromFloats("a", [2, 3], [1, 2, 3, 4, 5, 6]);
        var h = new SafetensorsTensor("b", DataType.Float16, [2], TensorConvert.FromFloat32([0.5f, -2f], DataType.Float16));
        SafetensorsWriter.Write(dir.File("x.safetensors"), [t, h], new Dictionary<string, string> { ["format"] = "pt" });
        using SafetensorsFile f = SafetensorsFile.Open(dir.File("x.safetensors"));
        CollectionAssert.AreEqual(new float[] { 1, 2, 3, 4, 5, 6 }, f.ToFloat32("a"));
        CollectionAssert.AreEqual(new float[] { 0.5f, -2f }, f.ToFloat32("b"));
        Assert.AreEqual("pt", f.Metadata["format"]);
        Assert.AreEqual(0, (8 + BinaryPrimitives.ReadInt64LittleEndian(System.IO.File.ReadAllBytes(dir.File("x.safetensors")))) % 8, "data section is 8-byte aligned");
    }

    [TestMethod]
    [DataRow("short", "too short")]
    [DataRow("huge", "limit")]
    [DataRow("overlap", "overlapping")]
    [DataRow("count", "needs")]
    [DataRow("truncated", "truncated")]
    [DataRow("gap", "gap")]
    public void Safetensors_BadFile_ThrowsNamingFileAndTensor(string kind, string expected)
    {
        using var dir = new TempDir();
        string path = dir.File(kind + ".safetensors");
        byte[] bytes = kind switch
        {
            "short" => [1, 2, 3],
            "huge" => BitConverter.GetBytes(200_000_000UL).Concat(new byte[16]).ToArray(),
            "overlap" => Header(@"{""a"":{""dtype"":""F32"",""shape"":[2],""data_offsets"":[0,8]},""b"":{""dtype"":""F32"",""shape"":[2],""data_offsets"":[4,12]}}", 12),
            "count" => Header(@"{""a"":{""dtype"":""F32"",""shape"":[3],""data_offsets"":[0,8]}}", 8),
            "truncated" => Header(@"{""a"":{""dtype"":""F32"",""shape"":[4],""data_offsets"":[0,16]}}", 9),
            _ => Header(@"{""a"":{""dtype"":""F32"",""shape"":[1],""data_offsets"":[4,8]}}", 8),
        };
        System.IO.File.WriteAllBytes(path, bytes);
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => SafetensorsFile.Open(path).Dispose());
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void SafetensorsWriter_WrongByteCount_ThrowsAndLeavesNoFile()
    {
        using var dir = new TempDir();
        var bad = new SafetensorsTensor("w", DataType.Float, [3], new byte[8]);
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => SafetensorsWriter.Write(dir.File("o.safetensors"), [bad]));
        StringAssert.Contains(e.Message, "'w'");
        Assert.AreEqual(0, Directory.GetFiles(dir.Path).Length);
    }

    [TestMethod]
    public void OnnxAdapter_BadFiles_ThrowClearErrors()
    {
        byte[] good = OnnxAdapterFormat.ToBytes(new AdapterFile { Parameters = [AdapterParameter.FromFloats("p", [2], [1, 2])] });
        StringAssert.Contains(Assert.ThrowsExactly<AdapterFormatException>(() => OnnxAdapterFormat.Read(good.AsMemory(0, good.Length - 12), "t.onnx_adapter")).Message, "t.onnx_adapter");
        byte[] wrongId = (byte[])good.Clone();
        Encoding.ASCII.GetBytes("ABCD").CopyTo(wrongId, 4);
        StringAssert.Contains(Assert.ThrowsExactly<AdapterFormatException>(() => OnnxAdapterFormat.Read(wrongId, "t")).Message, "identifier 'ABCD'");
        byte[] v2 = Build(2);
        StringAssert.Contains(Assert.ThrowsExactly<AdapterFormatException>(() => OnnxAdapterFormat.Read(v2, "t")).Message, "format_version 2");
        var mismatch = new AdapterFile { Parameters = [new AdapterParameter("p", DataType.Float, [3], new byte[8])] };
        StringAssert.Contains(Assert.ThrowsExactly<AdapterFormatException>(() => OnnxAdapterFormat.ToBytes(mismatch)).Message, "'p'");
    }

    [TestMethod]
    public void CheckNoSharedNames_TwoAdaptersSettingOneTensor_Throws()
    {
        var a = new AdapterFile { Parameters = [AdapterParameter.FromFloats("m.lora_A.weight", [1], [1])] };
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => AdapterValidation.CheckNoSharedNames([("one", a), ("two", a)]));
        StringAssert.Contains(e.Message, "m.lora_A.weight");
    }

    [TestMethod]
    public void LegacyGenAiFile_LlamaFixture_ReadsValidatesConvertsAndOrtAppliesIt()
    {
        AdapterFile legacy = OnnxAdapterFormat.Read(Adapters("tiny-random-llama-lora", "adapter_weights.fb"));
        Assert.AreEqual(AdapterFileFormat.LegacyGenAi, legacy.SourceFormat);
        Assert.AreEqual(28, legacy.Parameters.Count);
        AdapterValidation.ValidateAgainstGenAiConfig(legacy, Adapters("tiny-random-llama-lora", "genai_config.json"), "adapter_weights.fb");

        // The fixture llama models are 16 wide; this adapter was made for a 32-wide sibling: refused with the reason.
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => AdapterValidation.ValidateAgainstGenAiConfig(legacy, Fixtures.Path("ortgenai-tiny-random-llama-fp32", "genai_config.json"), "adapter_weights.fb"));
        StringAssert.Contains(e.Message, "implies 16");

        using var dir = new TempDir();
        string converted = dir.File("guanaco.onnx_adapter");
        OnnxAdapterFormat.Write(legacy with { SourceFormat = AdapterFileFormat.OnnxAdapter }, converted);
        AdapterFile back = OnnxAdapterFormat.Read(converted);
        CollectionAssert.AreEqual(legacy.Parameters[0].Data.ToArray(), back.Parameters[0].Data.ToArray());
        Assert.ThrowsExactly<OnnxRuntimeException>(() => OrtLoraAdapter.Create(Adapters("tiny-random-llama-lora", "adapter_weights.fb"), null).Dispose(), "ORT refuses the legacy file");

        // Apply: one MatMul per adapted module, in GenAI names; ORT's adapter path must equal our merge.
        (Model serving, LoraManifest manifest) = PerModuleModel(legacy);
        string servingPath = LoraTestModels.Save(serving, dir.File("serving.onnx"));
        AdapterValidation.ValidateAgainstModel(back, serving, converted);
        LoraMerger.Merge(servingPath, dir.File("merged.onnx"), converted);
        Dictionary<string, float[]> merged = OrtRunner.Run(dir.File("merged.onnx"));
        using OrtLoraAdapter adapter = OrtLoraAdapter.Create(converted, null);
        using var options = new RunOptions();
        options.AddActiveLoraAdapter(adapter);
        Dictionary<string, float[]> viaOrt = OrtRunner.Run(servingPath, runOptions: options);
        Dictionary<string, float[]> plain = OrtRunner.Run(servingPath);
        Assert.AreEqual(14, merged.Count);
        foreach ((string name, float[] m) in merged)
        {
            Assert.IsLessThanOrEqualTo(1e-5, LoraTestModels.MaxRelError(viaOrt[name], m), name);
            Assert.IsGreaterThan(1e-3, LoraTestModels.MaxRelError(plain[name], m), name + " must change");
        }
    }

    [TestMethod]
    public void LegacyGenAiFile_Gpt2Fixture_ReadsButDoesNotFitItsModel()
    {
        AdapterFile legacy = OnnxAdapterFormat.Read(Adapters("gpt2-fp32-lora", "two_lora_params.fb"));
        Assert.AreEqual(2, legacy.Parameters.Count);
        CollectionAssert.AreEqual(new long[] { 3072, 64 }, legacy.Parameters[0].Dims.ToArray());
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => AdapterValidation.ValidateAgainstGenAiConfig(legacy, Fixtures.Path("ortgenai-tiny-random-gpt2-fp32", "genai_config.json"), "two_lora_params.fb"));
        StringAssert.Contains(e.Message, "qkv_proj");
    }

    [TestMethod]
    public void Peft_ExportThenImport_GivesIdenticalTensorsAndPeftKeys()
    {
        using var dir = new TempDir();
        var rng = new Random(5);
        var weights = new LoraWeights(
        [
            new LoraModuleWeights("model.layers.0.self_attn.q_proj", 8, 6, 4, LoraTestModels.Rand(32, rng, 1), LoraTestModels.Rand(24, rng, 1), 16f / 2f),
            new LoraModuleWeights("model.layers.0.self_attn.v_proj", 8, 4, 2, LoraTestModels.Rand(16, rng, 1), LoraTestModels.Rand(8, rng, 1), (float)(16 / Math.Sqrt(2))),
        ]);
        PeftAdapter.Export(weights, dir.Path, new LoraConfig { Rank = 4, Alpha = 16, UseRsLora = true, Targets = ["q_proj", "v_proj"], RankPattern = [new PatternOverride("v_proj", 2)], BaseModelNameOrPath = "stories260K" });
        using (SafetensorsFile f = SafetensorsFile.Open(dir.File(PeftAdapter.WeightsFile)))
        {
            SafetensorsEntry a = f.Entry("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
            CollectionAssert.AreEqual(new long[] { 4, 8 }, a.Dims.ToArray(), "lora_A is [r, in]");
            CollectionAssert.AreEqual(new long[] { 6, 4 }, f.Entry("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").Dims.ToArray(), "lora_B is [out, r]");
            Assert.AreEqual(weights.Modules[0].A[1], f.ToFloat32(a.Name)[8], "A[in=1, k=0] sits at [k=0, in=1] transposed");
        }

        PeftConfig config = PeftAdapter.ReadConfig(dir.Path);
        Assert.AreEqual(4, config.R);
        Assert.AreEqual(2, config.RankOf("model.layers.0.self_attn.v_proj"), "rank_pattern");
        LoraWeights back = PeftAdapter.Import(dir.Path);
        foreach (LoraModuleWeights m in weights.Modules)
        {
            LoraModuleWeights r = back.Find(m.Module)!;
            CollectionAssert.AreEqual(m.A, r.A);
            CollectionAssert.AreEqual(m.B, r.B);
            Assert.AreEqual(m.Scale, r.Scale, 1e-6f * m.Scale);
        }
    }

    [TestMethod]
    public void PeftImport_KeyMatchingNoModule_ThrowsNamingTheKey()
    {
        using var dir = new TempDir();
        PeftAdapter.Export(LoraTestModels.RandomWeights(2, 4), dir.Path);
        LoraModuleInfo only = new() { Module = "model.layers.0.self_attn.qkv_proj", TargetNode = "n", BaseWeight = "w", Layout = WeightLayout.InOut, InFeatures = 16, OutFeatures = 48, Rank = 2, Alpha = 4, LoraA = "a", LoraB = "b" };
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => PeftAdapter.Import(dir.Path, [only]));
        StringAssert.Contains(e.Message, "model.layers.0.mlp.up_proj");
    }

    private static byte[] Header(string header, int dataBytes)
    {
        byte[] h = Encoding.UTF8.GetBytes(header);
        return BitConverter.GetBytes((ulong)h.Length).Concat(h).Concat(new byte[dataBytes]).ToArray();
    }

    private static byte[] Build(int version)
    {
        var b = new Google.FlatBuffers.FlatBufferBuilder(64);
        b.StartVector(4, 0, 4);
        var v = b.EndVector();
        b.StartTable(4);
        b.AddOffset(3, v.Value, 0);
        b.AddInt(0, version, 0);
        b.Finish(b.EndTable(), "TORT");
        return b.SizedByteArray();
    }

    private static (Model Model, LoraManifest Manifest) PerModuleModel(AdapterFile adapter)
    {
        var rng = new Random(3);
        var g = new GraphBuilder("per_module");
        var infos = new List<LoraModuleInfo>();
        foreach (AdapterParameter a in adapter.Parameters.Where(p => p.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal)))
        {
            string module = a.Name[..^".lora_A.weight".Length];
            AdapterParameter b = adapter.Find(module + ".lora_B.weight")!;
            int inF = (int)a.Dims[0], outF = (int)b.Dims[1];
            Value x = g.Input(module + ".x", DataType.Float, "n", inF);
            Value w = g.Floats(module + ".MatMul.weight", [inF, outF], LoraTestModels.Rand(inF * outF, rng, 0.3f));
            Value y = g.MatMul(x, w, name: module + "/MatMul");
            Value la = g.Input(a.Name, DataType.Float, inF, "r");
            Value lb = g.Input(b.Name, DataType.Float, "r", outF);
            g.Graph.Initializers.Add(la, InMemoryTensor.FromFloats(a.Name, [inF, 0], []));
            g.Graph.Initializers.Add(lb, InMemoryTensor.FromFloats(b.Name, [0, outF], []));
            g.Output(g.Add(y, g.MatMul(g.MatMul(x, la), lb)), module + ".y", DataType.Float, "n", outF);
            infos.Add(new LoraModuleInfo { Module = module, TargetNode = module + "/MatMul", BaseWeight = module + ".MatMul.weight", Layout = WeightLayout.InOut, InFeatures = inF, OutFeatures = outF, Rank = 0, Alpha = 0, LoraA = a.Name, LoraB = b.Name });
        }

        var manifest = new LoraManifest { Placement = LoraPlacement.AdapterSlots, Modules = infos };
        manifest.Write(g.Model);
        return (g.Model, manifest);
    }
}
