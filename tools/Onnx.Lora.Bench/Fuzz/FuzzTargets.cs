using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>
/// One reader under fuzzing: a valid seed file, a mutation that knows the format, and the code that reads an input the
/// way the CLI does (open, then touch every tensor). <see cref="Execute"/> must return or throw a
/// <see cref="ToolchainException"/> subtype; anything else is a crash.
/// </summary>
public abstract class FuzzTarget : IDisposable
{
    protected FuzzTarget(string name)
    {
        Name = name;
        Folder = Path.Combine(Path.GetTempPath(), "onnx-lora-fuzz", name + "-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Folder);
    }

    /// <summary>The target's name (onnx, safetensors, onnx_adapter, jsonl, adapter_config, tokenizer_json).</summary>
    public string Name { get; }

    /// <summary>A scratch folder holding the files the seed refers to (external data, adapter_config.json).</summary>
    public string Folder { get; }

    /// <summary>The valid input every mutation starts from.</summary>
    public abstract byte[] Seed { get; }

    /// <summary>The names of every target <see cref="Create"/> knows.</summary>
    public static IReadOnlyList<string> Names { get; } = ["onnx", "safetensors", "onnx_adapter", "jsonl", "adapter_config", "tokenizer_json"];

    /// <summary>Creates the target called <paramref name="name"/>.</summary>
    public static FuzzTarget Create(string name) => name switch
    {
        "onnx" => new OnnxFuzzTarget(),
        "safetensors" => new SafetensorsFuzzTarget(),
        "onnx_adapter" => new OnnxAdapterFuzzTarget(),
        "jsonl" => new JsonlFuzzTarget(),
        "adapter_config" => new AdapterConfigFuzzTarget(),
        "tokenizer_json" => new TokenizerJsonFuzzTarget(),
        _ => throw new ArgumentException($"Unknown fuzz target '{name}'; known: {string.Join(", ", Names)}.", nameof(name)),
    };

    /// <summary>A mutated copy of <paramref name="input"/>: a format-aware edit half of the time, else a blind one.</summary>
    public virtual byte[] Mutate(byte[] input, Random rng)
    {
        ArgumentNullException.ThrowIfNull(rng);
        return rng.Next(2) == 0 ? MutateStructure(input, rng) : ByteMutator.Mutate(input, rng);
    }

    /// <summary>Reads <paramref name="input"/> as the CLI would.</summary>
    public abstract void Execute(byte[] input);

    /// <inheritdoc />
    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected abstract byte[] MutateStructure(byte[] input, Random rng);

    protected virtual void Dispose(bool disposing)
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
            // A scratch folder left behind in /tmp is harmless.
        }
    }
}

/// <summary>
/// ONNX protobuf: a small model with inline initializers (raw and typed fields), external data, an If with two
/// subgraphs and value_info. The folder also holds a short data file, a symlink to a file outside and a subfolder, so
/// location mutations reach every containment and size check.
/// </summary>
public sealed class OnnxFuzzTarget : FuzzTarget
{
    private readonly byte[] _seed;
    private readonly string[] _locations;
    private readonly string _outside;

    public OnnxFuzzTarget() : base("onnx")
    {
        string modelPath = Path.Combine(Folder, "model.onnx");
        using (Model model = FuzzSeeds.BuildOnnxModel())
        {
            OnnxWriter.Save(model, modelPath, new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 64 });
        }

        _seed = File.ReadAllBytes(modelPath);
        File.WriteAllBytes(Path.Combine(Folder, "short.data"), [1, 2, 3]);
        _outside = Folder + ".outside.data";
        File.WriteAllBytes(_outside, new byte[4096]);
        File.CreateSymbolicLink(Path.Combine(Folder, "link.data"), _outside);
        _locations = ["model.onnx.data", "short.data", "link.data", "absent.data", "../model.onnx.data", "/etc/hostname", "sub/../model.onnx.data",
            "..\\model.onnx.data", "C:\\x.data", string.Empty, ".", "model.onnx", "0", "-1", "18446744073709551615", "9223372036854775807", "offset", "length", "location"];
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        using Model model = OnnxReader.Load(input, Folder);
        long sum = 0;
        foreach (Tensor t in model.Graph.Initializers.Values.Select(v => v.Initializer!))
        {
            if (t.DataType != DataType.String && t.ByteLength <= 1 << 20)
            {
                foreach (byte b in t.GetBytes().Span)
                {
                    sum += b;
                }
            }
        }

        GC.KeepAlive(sum);
        _ = OnnxWriter.ToBytes(model);
    }

    protected override byte[] MutateStructure(byte[] input, Random rng) => ProtobufMutator.Mutate(input, rng, _locations);

    protected override void Dispose(bool disposing)
    {
        File.Delete(_outside);
        base.Dispose(disposing);
    }
}

/// <summary>safetensors (PEFT layout): header length field and header JSON edits, read by SafetensorsFile and PEFT import.</summary>
public sealed class SafetensorsFuzzTarget : FuzzTarget
{
    private static readonly string[] s_dtypes = ["F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "F4", "XX", ""];
    private readonly byte[] _seed;
    private readonly string _path;

    public SafetensorsFuzzTarget() : base("safetensors")
    {
        _seed = FuzzSeeds.BuildSafetensors(Folder);
        _path = Path.Combine(Folder, PeftAdapter.WeightsFile);
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        File.WriteAllBytes(_path, input);
        using (SafetensorsFile file = SafetensorsFile.Open(_path))
        {
            foreach (SafetensorsEntry e in file.Tensors)
            {
                _ = file.GetBytes(e.Name).Length;
                if (e.DataType is DataType.Float or DataType.Float16 or DataType.BFloat16 or DataType.Double)
                {
                    _ = file.ToFloat32(e.Name);
                }
            }
        }

        _ = PeftAdapter.ImportFile(_path);
    }

    protected override byte[] MutateStructure(byte[] input, Random rng)
    {
        if (input.Length < 8)
        {
            return ByteMutator.Mutate(input, rng);
        }

        ulong declared = BinaryPrimitives.ReadUInt64LittleEndian(input);
        if (rng.Next(5) == 0 || declared > (ulong)(input.Length - 8))
        {
            byte[] copy = (byte[])input.Clone();
            BinaryPrimitives.WriteInt64LittleEndian(copy, ByteMutator.InterestingInteger(rng, (long)declared));
            return copy;
        }

        string header = Encoding.UTF8.GetString(input, 8, (int)declared);
        byte[] data = input.AsSpan(8 + (int)declared).ToArray();
        string mutated = MutateHeader(header, rng);
        byte[] headerBytes = Encoding.UTF8.GetBytes(mutated);
        var result = new byte[8 + headerBytes.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(result, (ulong)headerBytes.Length);
        headerBytes.CopyTo(result, 8);
        data.CopyTo(result, 8 + headerBytes.Length);
        return result;
    }

    private static string MutateHeader(string header, Random rng)
    {
        JsonObject? root;
        try
        {
            root = JsonNode.Parse(header) as JsonObject;
            _ = root?.Count; // materializes the properties: a duplicated key throws here
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException or InvalidOperationException)
        {
            root = null;
        }

        if (root is null || root.Count == 0)
        {
            return Encoding.UTF8.GetString(ByteMutator.Mutate(Encoding.UTF8.GetBytes(header), rng));
        }

        string[] keys = root.Select(p => p.Key).ToArray();
        string key = keys[rng.Next(keys.Length)];
        switch (rng.Next(8))
        {
            case 0:
                // A duplicated key cannot be built with JsonObject: splice the text.
                int brace = header.IndexOf('{', StringComparison.Ordinal);
                return string.Concat(header.AsSpan(0, brace + 1), $"\"{key}\":{root[key]?.ToJsonString() ?? "null"},", header.AsSpan(brace + 1));
            case 1:
                root.Remove(key);
                break;
            case 2:
                root[key] = rng.Next(3) switch { 0 => null, 1 => JsonValue.Create(1), _ => new JsonArray() };
                break;
            case 3:
                return rng.Next(4) switch { 0 => "[]", 1 => "null", 2 => "1", _ => "{" };
            default:
                if (root[key] is JsonObject entry)
                {
                    MutateEntry(entry, root, rng);
                }
                else
                {
                    root[key] = new JsonObject { ["x"] = rng.Next(2) == 0 ? JsonValue.Create(1) : new JsonObject() };
                }

                break;
        }

        return root.ToJsonString();
    }

    private static void MutateEntry(JsonObject entry, JsonObject root, Random rng)
    {
        switch (rng.Next(6))
        {
            case 0:
                entry["dtype"] = rng.Next(6) == 0 ? JsonValue.Create(rng.Next()) : JsonValue.Create(s_dtypes[rng.Next(s_dtypes.Length)]);
                break;
            case 1:
                entry["shape"] = rng.Next(5) switch
                {
                    0 => new JsonArray(),
                    1 => new JsonArray(-1),
                    2 => new JsonArray(long.MaxValue, long.MaxValue),
                    3 => new JsonArray("a"),
                    _ => new JsonArray(ByteMutator.InterestingInteger(rng, 4), ByteMutator.InterestingInteger(rng, 2)),
                };
                break;
            case 2:
            case 3:
                long begin = ByteMutator.InterestingInteger(rng, 0), end = ByteMutator.InterestingInteger(rng, 32);
                entry["data_offsets"] = rng.Next(6) switch
                {
                    0 => new JsonArray(begin),
                    1 => new JsonArray(1e300, 0),
                    2 => new JsonArray(begin, end, 0),
                    _ => new JsonArray(begin, end),
                };
                break;
            case 4:
                // Two tensors claim the same bytes.
                JsonObject? other = root.Select(p => p.Value).OfType<JsonObject>().FirstOrDefault(o => !ReferenceEquals(o, entry) && o.ContainsKey("data_offsets"));
                if (other?["data_offsets"] is JsonNode offsets)
                {
                    entry["data_offsets"] = offsets.DeepClone();
                }

                break;
            default:
                entry.Remove(rng.Next(3) switch { 0 => "dtype", 1 => "shape", _ => "data_offsets" });
                break;
        }
    }
}

/// <summary>.onnx_adapter (FlatBuffers "TORT"): uoffset / soffset / vtable edits, identifier swaps, read and grouped by module.</summary>
public sealed class OnnxAdapterFuzzTarget : FuzzTarget
{
    private readonly byte[] _seed = OnnxAdapterFormat.ToBytes(FuzzSeeds.BuildAdapter());

    public OnnxAdapterFuzzTarget() : base("onnx_adapter")
    {
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        AdapterFile adapter = OnnxAdapterFormat.Read(input, "fuzz.onnx_adapter");
        _ = AdapterLoader.FromNamedAdapter(adapter, "fuzz.onnx_adapter");
    }

    protected override byte[] MutateStructure(byte[] input, Random rng)
    {
        byte[] copy = (byte[])input.Clone();
        if (copy.Length < 8)
        {
            return ByteMutator.Mutate(copy, rng);
        }

        switch (rng.Next(4))
        {
            case 0:
                Encoding.ASCII.GetBytes(rng.Next(3) switch { 0 => "GAIL", 1 => "TORX", _ => "\0\0\0\0" }).CopyTo(copy, 4);
                return copy;
            case 1:
            {
                // A 16-bit vtable entry (vtable size, table size or a field offset).
                int at = rng.Next(copy.Length / 2) * 2;
                if (at + 2 <= copy.Length)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(copy.AsSpan(at), (ushort)ByteMutator.InterestingInteger(rng, BinaryPrimitives.ReadUInt16LittleEndian(copy.AsSpan(at))));
                }

                return copy;
            }

            default:
            {
                // A 32-bit uoffset / soffset / vector length (FlatBuffers aligns them to 4 bytes).
                int at = rng.Next(copy.Length / 4) * 4;
                if (at + 4 <= copy.Length)
                {
                    BinaryPrimitives.WriteInt32LittleEndian(copy.AsSpan(at), (int)ByteMutator.InterestingInteger(rng, BinaryPrimitives.ReadInt32LittleEndian(copy.AsSpan(at))));
                }

                return copy;
            }
        }
    }
}
