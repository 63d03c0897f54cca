using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.BadInput;

/// <summary>
/// Adapters that parse but would merge into something PEFT never computes (issue 15, item 5) or that crashed with
/// exit 70 (item 6): each is merged through the CLI, as the checks did, and must end in exit 5 with one line
/// naming the file and the tensor or field, and no output.
/// </summary>
[TestClass]
public sealed class AdapterConsistencyTests
{
    private const int BadAdapter = 5;

    /// <summary>A PEFT folder for the stand-in base (modules qkv_proj and up_proj) and the base model beside it.</summary>
    private static (string Base, string Peft) BaseAndPeft(TempDir dir, bool dora = false)
    {
        string basePath = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        string peft = dir.File("peft");
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4, dora: dora), peft);
        return (basePath, peft);
    }

    private static (int ExitCode, string Out, string Err) Merge(TempDir dir, string basePath, string adapter) =>
        CliRunner.Run("merge", basePath, "--adapter", adapter, "-o", dir.File("merged.onnx"));

    private static void AssertRefused((int ExitCode, string Out, string Err) result, TempDir dir, params string[] expected)
    {
        Assert.AreEqual(BadAdapter, result.ExitCode, result.Err + result.Out);
        Assert.AreEqual(1, result.Err.TrimEnd().Split('\n').Length, result.Err);
        foreach (string e in expected)
        {
            StringAssert.Contains(result.Err, e);
        }

        Assert.IsFalse(File.Exists(dir.File("merged.onnx")), "no output");
    }

    /// <summary>Rewrites the JSON header of a safetensors file (the data section is kept byte for byte).</summary>
    internal static void EditHeader(string path, Action<JsonObject> edit)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int headerLength = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(bytes));
        var header = (JsonObject)JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength))!;
        edit(header);
        byte[] newHeader = Encoding.UTF8.GetBytes(header.ToJsonString());
        byte[] result = new byte[8 + newHeader.Length + (bytes.Length - 8 - headerLength)];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)newHeader.Length);
        newHeader.CopyTo(result, 8);
        bytes.AsSpan(8 + headerLength).CopyTo(result.AsSpan(8 + newHeader.Length));
        File.WriteAllBytes(path, result);
    }

    private static void EditConfig(string peft, Action<JsonObject> edit)
    {
        string path = Path.Combine(peft, PeftAdapter.ConfigFile);
        var config = (JsonObject)JsonNode.Parse(File.ReadAllText(path))!;
        edit(config);
        File.WriteAllText(path, config.ToJsonString());
    }

    private const string QkvA = "base_model.model.qkv_proj.lora_A.weight";

    [TestMethod]
    public void Merge_UnchangedPeftFolder_Succeeds()
    {
        // The control for every refusal below: the same folder, unedited, merges.
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        var result = Merge(dir, basePath, peft);
        Assert.AreEqual(0, result.ExitCode, result.Err);
    }

    [TestMethod]
    [DataRow("I32", "int32")]
    [DataRow("U32", "uint32")]
    public void Merge_IntegerLoraA_ExitsBadAdapterNamingTensor(string dtype, string shown)
    {
        // Issue 15: an I32 lora_A was merged as if float (values converted as integers: q_proj off by 9e6).
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditHeader(Path.Combine(peft, PeftAdapter.WeightsFile), h => h[QkvA]!["dtype"] = dtype);
        AssertRefused(Merge(dir, basePath, peft), dir, QkvA, PeftAdapter.WeightsFile, shown, "float32, float16, bfloat16");
    }

    [TestMethod]
    [DataRow("F16")]
    [DataRow("BF16")]
    public void Import_HalfPrecisionLoraWeights_ConvertsEachValueExactly(string dtype)
    {
        // Values exactly representable in both 16-bit formats: the import must give them back bit for bit, so the
        // reference is the float itself (System.Half and a bfloat16 that keeps the top 16 bits of the float32).
        using var dir = new TempDir();
        float[] values = [0.5f, -1.25f, 3f, 0.0078125f, -2f, 96f, 0.375f, -0.75f];
        byte[] data = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++)
        {
            ushort bits = dtype == "F16" ? BitConverter.HalfToUInt16Bits((Half)values[i]) : (ushort)(BitConverter.SingleToUInt32Bits(values[i]) >> 16);
            BinaryPrimitives.WriteUInt16LittleEndian(data.AsSpan(i * 2), bits);
        }

        // A [r=2, in=2] then B [out=2, r=2], both 16-bit.
        WriteSafetensors(dir.File(PeftAdapter.WeightsFile),
            ("base_model.model.m.lora_A.weight", dtype, [2, 2], data[..8]),
            ("base_model.model.m.lora_B.weight", dtype, [2, 2], data[8..]));
        File.WriteAllText(dir.File(PeftAdapter.ConfigFile), """{"r": 2, "lora_alpha": 2, "target_modules": ["m"]}""");

        LoraModuleWeights m = PeftAdapter.Import(dir.Path).Modules.Single();
        // Transposed to MatMul layout: A [in, r], B [r, out].
        CollectionAssert.AreEqual(new[] { 0.5f, 3f, -1.25f, 0.0078125f }, m.A);
        CollectionAssert.AreEqual(new[] { -2f, 0.375f, 96f, -0.75f }, m.B);
    }

    [TestMethod]
    public void Merge_UseDoraWithoutMagnitudes_ExitsBadAdapter()
    {
        // Issue 15: use_dora true without magnitude vectors merged as plain LoRA.
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditConfig(peft, c => c["use_dora"] = true);
        AssertRefused(Merge(dir, basePath, peft), dir, "use_dora", "lora_magnitude_vector", PeftAdapter.WeightsFile);
    }

    [TestMethod]
    public void Merge_MagnitudesWithUseDoraFalse_ExitsBadAdapter()
    {
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir, dora: true);
        EditConfig(peft, c => c["use_dora"] = false);
        AssertRefused(Merge(dir, basePath, peft), dir, "use_dora", "lora_magnitude_vector");
    }

    [TestMethod]
    public void Merge_DoraFolder_Succeeds()
    {
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir, dora: true);
        var result = Merge(dir, basePath, peft);
        Assert.AreEqual(0, result.ExitCode, result.Err);
    }

    [TestMethod]
    [DataRow("[\"nonexistent\"]", "none of the 2 modules")]
    [DataRow("[]", "none of the 2 modules")]
    [DataRow("[\"qkv_proj\"]", "1 of the 2 modules")]
    [DataRow("\".*\\\\.q_proj\"", "none of the 2 modules")]
    public void Merge_TargetModulesNotSelectingTheWeights_ExitsBadAdapter(string targets, string expected)
    {
        // Issue 15: target_modules naming no module of the model still merged all modules.
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditConfig(peft, c => c["target_modules"] = JsonNode.Parse(targets));
        AssertRefused(Merge(dir, basePath, peft), dir, "target_modules", expected, PeftAdapter.ConfigFile);
    }

    [TestMethod]
    [DataRow("5")]
    [DataRow("{\"q\": 1}")]
    [DataRow("true")]
    public void Merge_TargetModulesOfAnotherType_ExitsBadAdapter(string targets)
    {
        // Anything but a list or a string was ignored, and every module merged.
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditConfig(peft, c => c["target_modules"] = JsonNode.Parse(targets));
        AssertRefused(Merge(dir, basePath, peft), dir, "'target_modules' is", PeftAdapter.ConfigFile);
    }

    [TestMethod]
    [DataRow("[\"qkv_proj\", \"up_proj\"]")]
    [DataRow("\"all-linear\"")]
    [DataRow("\".*(qkv|up)_proj\"")]
    [DataRow("null")]
    public void Merge_TargetModulesSelectingEveryModule_Succeeds(string targets)
    {
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditConfig(peft, c => c["target_modules"] = JsonNode.Parse(targets));
        var result = Merge(dir, basePath, peft);
        Assert.AreEqual(0, result.ExitCode, result.Err);
    }

    [TestMethod]
    public void Merge_DataOffsetsAsStrings_ExitsBadAdapterNotInternalError()
    {
        // Issue 15: exit 70 (InvalidOperationException from JsonElement.TryGetInt64 on a string).
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        EditHeader(Path.Combine(peft, PeftAdapter.WeightsFile), h =>
        {
            JsonArray offsets = h[QkvA]!["data_offsets"]!.AsArray();
            h[QkvA]!["data_offsets"] = new JsonArray(offsets[0]!.ToJsonString(), offsets[1]!.ToJsonString());
        });
        AssertRefused(Merge(dir, basePath, peft), dir, QkvA, "data_offsets");
    }

    [TestMethod]
    public void Merge_EmptySafetensors_SaysItHoldsNoTensors()
    {
        // Issue 15: an empty safetensors file said "No target modules given".
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        WriteSafetensors(Path.Combine(peft, PeftAdapter.WeightsFile));
        AssertRefused(Merge(dir, basePath, peft), dir, "holds no tensors", PeftAdapter.WeightsFile);
    }

    [TestMethod]
    public void Merge_EmptyOnnxAdapter_SaysItHoldsNoTensors()
    {
        using var dir = new TempDir();
        (string basePath, _) = BaseAndPeft(dir);
        OnnxAdapterFormat.Write(new AdapterFile { Parameters = [] }, dir.File("empty.onnx_adapter"));
        AssertRefused(Merge(dir, basePath, dir.File("empty.onnx_adapter")), dir, "holds no tensors", "empty.onnx_adapter");
    }

    [TestMethod]
    [DataRow(1)]
    [DataRow(2)]
    [DataRow(3)]
    [DataRow(4)]
    public void Merge_RandomBytesAdapter_ExitsBadAdapter(int seed)
    {
        // Issue 15: an adapter file of random bytes; as .onnx_adapter, with the right identifier, and as a PEFT
        // safetensors file beside a valid config.
        using var dir = new TempDir();
        (string basePath, string peft) = BaseAndPeft(dir);
        var rng = new Random(seed);
        byte[] noise = new byte[4096];
        rng.NextBytes(noise);
        File.WriteAllBytes(dir.File("noise.onnx_adapter"), noise);
        AssertRefused(Merge(dir, basePath, dir.File("noise.onnx_adapter")), dir, "noise.onnx_adapter");

        "TORT"u8.CopyTo(noise.AsSpan(4));
        File.WriteAllBytes(dir.File("tort.onnx_adapter"), noise);
        AssertRefused(Merge(dir, basePath, dir.File("tort.onnx_adapter")), dir, "tort.onnx_adapter");

        File.WriteAllBytes(Path.Combine(peft, PeftAdapter.WeightsFile), noise);
        AssertRefused(Merge(dir, basePath, peft), dir, PeftAdapter.WeightsFile);
    }

    [TestMethod]
    public void Load_IntegerOnnxAdapterParameter_RefusedForEveryTensorKind()
    {
        // The .onnx_adapter side of the same rule, through the manifest path (LoraWeights.FromAdapter) too.
        using var dir = new TempDir();
        AdapterFile file = AdapterLoader.ToNamedAdapter(LoraTestModels.RandomWeights(2, 4));
        AdapterParameter a = file.Parameters[0];
        var ints = new AdapterParameter(a.Name, Onnx.Lora.Ir.DataType.Int32, a.Dims, a.Data);
        OnnxAdapterFormat.Write(new AdapterFile { Parameters = [ints, .. file.Parameters.Skip(1)] }, dir.File("int.onnx_adapter"));
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => AdapterLoader.Load(dir.File("int.onnx_adapter")));
        StringAssert.Contains(e.Message, a.Name);
        StringAssert.Contains(e.Message, "int32");
    }

    /// <summary>A safetensors file of raw tensors (no validation: tests write what they need).</summary>
    internal static void WriteSafetensors(string path, params (string Name, string DType, long[] Shape, byte[] Data)[] tensors)
    {
        var header = new JsonObject();
        long offset = 0;
        foreach ((string name, string dtype, long[] shape, byte[] data) in tensors)
        {
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode?)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + data.Length),
            };
            offset += data.Length;
        }

        byte[] headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var stream = File.Create(path);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)headerBytes.Length);
        stream.Write(length);
        stream.Write(headerBytes);
        foreach ((_, _, _, byte[] data) in tensors)
        {
            stream.Write(data);
        }
    }
}
