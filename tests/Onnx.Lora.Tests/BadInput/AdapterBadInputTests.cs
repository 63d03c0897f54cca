using System.Buffers.Binary;
using System.Text;
using Onnx.Lora.Bench.Fuzz;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.BadInput;

/// <summary>
/// Hostile adapters: .onnx_adapter (FlatBuffers), safetensors headers and adapter_config.json. Each gives an
/// <see cref="AdapterFormatException"/> (or <see cref="AdapterMismatchException"/> when the file is well formed but does
/// not fit the model) naming the file and the tensor / key / field.
/// </summary>
[TestClass]
public sealed class AdapterBadInputTests
{
    private const string Source = "hostile.onnx_adapter";

    private static AdapterFormatException ReadFails(byte[] bytes, params string[] expected)
    {
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => AdapterLoader.FromNamedAdapter(OnnxAdapterFormat.Read(bytes, Source), Source));
        StringAssert.Contains(e.Message, Source);
        foreach (string s in expected)
        {
            StringAssert.Contains(e.Message, s);
        }

        return e;
    }

    /// <summary>Position of the first dims vector [4, 2] (two little-endian int64) in the seed adapter.</summary>
    private static int DimsPosition(byte[] bytes)
    {
        byte[] pattern = [4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        int at = bytes.AsSpan().IndexOf(pattern);
        Assert.IsGreaterThanOrEqualTo(0, at);
        return at;
    }

    [TestMethod]
    public void OnnxAdapter_WrongIdentifier_ThrowsNamingIdentifier()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        Encoding.ASCII.GetBytes("ZIP!").CopyTo(bytes, 4);
        ReadFails(bytes, "'ZIP!'", "TORT");
    }

    [TestMethod]
    public void OnnxAdapter_WrongFormatVersion_ThrowsNamingVersion()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        ReadFails(PatchRootInt(bytes, fieldIndex: 0, value: 2), "format_version 2");
    }

    [TestMethod]
    public void OnnxAdapter_RawDataSizeDisagreesWithDims_ThrowsNamingParameter()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(DimsPosition(bytes)), 5);
        ReadFails(bytes, ".lora_A.weight'", "bytes; dims [5,2]", "need");
    }

    [TestMethod]
    public void OnnxAdapter_DimsOverflow_ThrowsNamingParameter()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        int at = DimsPosition(bytes);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(at), long.MaxValue);
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(at + 8), long.MaxValue);
        ReadFails(bytes, ".lora_A.weight'", "overflows");
    }

    [TestMethod]
    public void OnnxAdapter_DuplicateNames_ThrowsNamingParameter()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        // Rename the up_proj A parameter to the q_proj A name (same length: "mlp.up_proj" vs "attn.q_proj").
        byte[] from = Encoding.UTF8.GetBytes("model.layers.0.mlp.up_proj.lora_A.weight");
        byte[] to = Encoding.UTF8.GetBytes("model.layers.0.attn.q_proj.lora_A.weight"[..from.Length]);
        int at = bytes.AsSpan().IndexOf(from);
        to.CopyTo(bytes, at);
        string duplicate = Encoding.UTF8.GetString(to);
        Assert.AreEqual("model.layers.0.attn.q_proj.lora_A.weight".Length, from.Length, "the rename must keep the length");
        ReadFails(bytes, $"'{duplicate}' twice");
    }

    [TestMethod]
    [DataRow(0x7FFFFFF0)]
    [DataRow(-16)]
    [DataRow(-1)]
    public void OnnxAdapter_RootOffsetHostile_ThrowsPointsOutside(int rootOffset)
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        BinaryPrimitives.WriteInt32LittleEndian(bytes, rootOffset);
        ReadFails(bytes, "outside the file");
    }

    [TestMethod]
    public void OnnxAdapter_EveryTruncation_ThrowsOrReadsTheSameTensors()
    {
        byte[] bytes = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());
        AdapterFile original = OnnxAdapterFormat.Read(bytes, Source);
        int failures = 0;
        for (int length = 0; length < bytes.Length; length++)
        {
            AdapterFile read;
            try
            {
                read = OnnxAdapterFormat.Read(bytes.AsSpan(0, length).ToArray(), Source);
            }
            catch (AdapterFormatException)
            {
                failures++;
                continue;
            }

            // A cut that removes only trailing padding (FlatBuffers builds back to front) loses nothing.
            CollectionAssert.AreEqual(original.Parameters.Select(p => p.Name).ToArray(), read.Parameters.Select(p => p.Name).ToArray(), $"cut at {length}");
            for (int i = 0; i < read.Parameters.Count; i++)
            {
                Assert.IsTrue(original.Parameters[i].Data.Span.SequenceEqual(read.Parameters[i].Data.Span), $"cut at {length}");
            }
        }

        Assert.IsGreaterThan(bytes.Length - 16, failures, "only cuts inside the trailing padding may read");
    }

    [TestMethod]
    public void OnnxAdapter_NonFloatParameter_ThrowsNamingParameterAndType()
    {
        var adapter = new AdapterFile
        {
            Parameters =
            [
                new AdapterParameter("m.lora_A.weight", DataType.Int4, [4, 2], new byte[4]),
                AdapterParameter.FromFloats("m.lora_B.weight", [2, 4], new float[8]),
            ],
        };
        ReadFails(OnnxAdapterFormat.ToBytes(adapter), "'m.lora_A.weight'", "int4");
    }

    [TestMethod]
    public void OnnxAdapter_NameAbsentFromServingModel_ThrowsMismatchNamingParameter()
    {
        AdapterFile adapter = FuzzSeeds.BuildAdapter();
        var b = new GraphBuilder("serving");
        Value x = b.Input("x", DataType.Float, 1, 4);
        b.Output(b.Identity(x), "y", DataType.Float, 1, 4);
        var e = Assert.ThrowsExactly<AdapterMismatchException>(() => AdapterValidation.ValidateAgainstModel(adapter, b.Model, Source));
        StringAssert.Contains(e.Message, "'model.layers.0.attn.q_proj.lora_A.weight'");
        StringAssert.Contains(e.Message, Source);
        StringAssert.Contains(e.Message, "not an input");
    }

    [TestMethod]
    [DataRow("notjson", "not valid JSON")]
    [DataRow("array", "not a JSON object")]
    [DataRow("utf8", "not valid UTF-8")]
    [DataRow("dtype", "unsupported dtype 'Q7'")]
    [DataRow("outofrange", "truncated or trailing")]
    [DataRow("negative", "invalid data_offsets")]
    [DataRow("dupkey", "names tensor 'a' twice")]
    [DataRow("shape", "invalid shape entry")]
    public void Safetensors_HostileHeader_ThrowsNamingFileAndItem(string kind, string expected)
    {
        using var dir = new TempDir();
        string path = dir.File(kind + ".safetensors");
        byte[] header = kind switch
        {
            "notjson" => Encoding.UTF8.GetBytes("{\"a\": {\"dtype\": \"F32\", "),
            "array" => Encoding.UTF8.GetBytes("[1, 2]"),
            "utf8" => [.. Encoding.UTF8.GetBytes("{\"a"), 0xC3, 0x28, .. Encoding.UTF8.GetBytes("\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}")],
            "dtype" => Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}"),
            "outofrange" => Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1000],\"data_offsets\":[0,4000]}}"),
            "negative" => Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}"),
            "dupkey" => Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"),
            _ => Encoding.UTF8.GetBytes("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}"),
        };
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[4]]);
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => SafetensorsFile.Open(path).Dispose());
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    [DataRow("""{"r": 2, "lora_alpha": 4, "rank_pattern": {"(": 4}}""", "'('", "not a valid regex")]
    [DataRow("""{"r": "eight", "lora_alpha": 4}""", "'r'")]
    [DataRow("""{"r": 0, "lora_alpha": 4}""", "'r'", "positive")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "rank_pattern": {"q_proj": null}}""", "rank_pattern['q_proj']")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", 7]}""", "target_modules[1]")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "peft_type": "IA3"}""", "peft_type 'IA3'")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "peft_type": 7}""", "'peft_type' is 7; expected a string")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "fan_in_fan_out": "yes"}""", "'fan_in_fan_out' is \"yes\"; expected a boolean")]
    [DataRow("""{"r": 2}""", "'lora_alpha'")]
    [DataRow("""[2, 4]""", "expected an object")]
    [DataRow("""{"r": 2, "lora_alpha": """, "Cannot read")]
    [DataRow("""{"r": 2, "lora_alpha": 4, "base_model_name_or_path": "XXXXXXXXXXXXXXXX"}""", "bytes; an adapter_config.json is a few KB", "limit is 1,048,576")]
    public void PeftConfig_Hostile_ThrowsNamingFileAndField(string json, string expected, string? expected2 = null)
    {
        using var dir = new TempDir();
        FuzzSeeds.BuildSafetensors(dir.Path);
        // The X run stands for a 2 MB value (what the adapter_config fuzz target found costing 75 MB to parse).
        File.WriteAllText(dir.File(PeftAdapter.ConfigFile), json.Replace("XXXXXXXXXXXXXXXX", new string('X', 2 << 20), StringComparison.Ordinal));
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => PeftAdapter.Import(dir.Path));
        StringAssert.Contains(e.Message, PeftAdapter.ConfigFile);
        StringAssert.Contains(e.Message, expected);
        if (expected2 is not null)
        {
            StringAssert.Contains(e.Message, expected2);
        }
    }

    [TestMethod]
    public void PeftConfig_Missing_ThrowsNamingConfigFile()
    {
        using var dir = new TempDir();
        FuzzSeeds.BuildSafetensors(dir.Path);
        File.Delete(dir.File(PeftAdapter.ConfigFile));
        var e = Assert.ThrowsExactly<AdapterFormatException>(() => PeftAdapter.Import(dir.Path));
        StringAssert.Contains(e.Message, "adapter_config.json");
        StringAssert.Contains(e.Message, "does not exist");
    }

    /// <summary>Rewrites int field <paramref name="fieldIndex"/> of the root table in place (the field must be present).</summary>
    private static byte[] PatchRootInt(byte[] bytes, int fieldIndex, int value)
    {
        byte[] copy = (byte[])bytes.Clone();
        int root = BinaryPrimitives.ReadInt32LittleEndian(copy);
        int vtable = root - BinaryPrimitives.ReadInt32LittleEndian(copy.AsSpan(root));
        int offset = BinaryPrimitives.ReadUInt16LittleEndian(copy.AsSpan(vtable + 4 + (2 * fieldIndex)));
        Assert.AreNotEqual(0, offset, "field present");
        BinaryPrimitives.WriteInt32LittleEndian(copy.AsSpan(root + offset), value);
        return copy;
    }
}
