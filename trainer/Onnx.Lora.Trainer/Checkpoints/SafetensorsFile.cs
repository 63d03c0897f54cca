using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>
/// Minimal float32 safetensors reader/writer for checkpoints: an 8-byte little-endian header length, a JSON header
/// <c>{name: {dtype, shape, data_offsets}, "__metadata__": {...}}</c> padded with spaces to 8 bytes, then the data.
/// </summary>
/// <remarks>
/// NOTE: the exporter (branch <c>exporter</c>) owns the full safetensors/PEFT implementation; this one only covers
/// what checkpoints need (F32) and should be replaced by it once that lands on main.
/// </remarks>
internal static class SafetensorsFile
{
    /// <summary>Writes <paramref name="tensors"/> to <paramref name="stream"/> in the given order.</summary>
    public static void Write(Stream stream, IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is not null)
        {
            var meta = new JsonObject();
            foreach ((string k, string v) in metadata)
            {
                meta[k] = v;
            }

            header["__metadata__"] = meta;
        }

        long offset = 0;
        foreach (NamedTensor t in tensors)
        {
            if (t.ElementCount != t.Data.Length)
            {
                throw new ArgumentException($"Tensor '{t.Name}' has shape [{string.Join(",", t.Shape)}] but {t.Data.Length} values.", nameof(tensors));
            }

            long bytes = (long)t.Data.Length * sizeof(float);
            header[t.Name] = new JsonObject
            {
                ["dtype"] = "F32",
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }

        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(json);
        for (int i = json.Length; i < padded; i++)
        {
            stream.WriteByte((byte)' ');
        }

        foreach (NamedTensor t in tensors)
        {
            // safetensors is little-endian, like every platform .NET runs this on; MemoryMarshal avoids a copy.
            stream.Write(MemoryMarshal.AsBytes(t.Data.AsSpan()));
        }
    }

    /// <summary>Reads every tensor of a float32 safetensors file, in file order.</summary>
    /// <exception cref="CheckpointException">The file is truncated, malformed or holds a non-F32 tensor.</exception>
    public static List<NamedTensor> Read(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"Cannot read '{path}': {e.Message}", e);
        }

        if (bytes.Length < 8)
        {
            throw new CheckpointException($"'{path}' is truncated ({bytes.Length} bytes): not a safetensors file.");
        }

        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > (ulong)(bytes.Length - 8))
        {
            throw new CheckpointException($"'{path}': header length {headerLength} exceeds the file size {bytes.Length}.");
        }

        JsonObject header;
        try
        {
            header = JsonNode.Parse(bytes.AsSpan(8, (int)headerLength))?.AsObject()
                ?? throw new CheckpointException($"'{path}': empty safetensors header.");
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"'{path}': the safetensors header is not valid JSON: {e.Message}", e);
        }

        int dataStart = 8 + (int)headerLength;
        var result = new List<(long Begin, NamedTensor Tensor)>();
        foreach ((string name, JsonNode? node) in header)
        {
            if (name == "__metadata__")
            {
                continue;
            }

            string? dtype = node?["dtype"]?.GetValue<string>();
            if (dtype != "F32")
            {
                throw new CheckpointException($"'{path}': tensor '{name}' has dtype {dtype}; checkpoints hold F32 only.");
            }

            long[] shape = node!["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
            long begin = node["data_offsets"]![0]!.GetValue<long>();
            long end = node["data_offsets"]![1]!.GetValue<long>();
            long count = shape.Aggregate(1L, (a, d) => a * d);
            if (end - begin != count * sizeof(float) || begin < 0 || dataStart + end > bytes.Length)
            {
                throw new CheckpointException($"'{path}': tensor '{name}' data [{begin},{end}) does not fit shape [{string.Join(",", shape)}] or the file ({bytes.Length} bytes).");
            }

            float[] data = MemoryMarshal.Cast<byte, float>(bytes.AsSpan(dataStart + (int)begin, (int)(end - begin))).ToArray();
            result.Add((begin, new NamedTensor(name, shape, data)));
        }

        return result.OrderBy(r => r.Begin).Select(r => r.Tensor).ToList();
    }
}
