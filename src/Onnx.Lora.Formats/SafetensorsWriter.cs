using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Formats;

/// <summary>A tensor to write into a safetensors file.</summary>
/// <param name="Name">Tensor name (the key).</param>
/// <param name="DataType">Element type.</param>
/// <param name="Dims">Shape.</param>
/// <param name="Data">Raw little-endian bytes.</param>
public sealed record SafetensorsTensor(string Name, DataType DataType, IReadOnlyList<long> Dims, ReadOnlyMemory<byte> Data)
{
    /// <summary>A float32 tensor.</summary>
    public static SafetensorsTensor FromFloats(string name, IReadOnlyList<long> dims, ReadOnlySpan<float> values) =>
        new(name, DataType.Float, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray());
}

/// <summary>Writes safetensors files atomically (a failed write leaves nothing at the destination).</summary>
public static class SafetensorsWriter
{
    /// <summary>
    /// The <c>__metadata__</c> torch's safetensors writer (and so PEFT and Transformers) puts in every file; written when
    /// the caller gives none, since <c>safetensors.torch.load_file</c> users check it.
    /// </summary>
    public static IReadOnlyDictionary<string, string> PtMetadata { get; } = new Dictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };

    /// <summary>Writes <paramref name="tensors"/> (in name order, as the reference writer does) and <paramref name="metadata"/> to <paramref name="path"/>.</summary>
    /// <exception cref="AdapterFormatException">A tensor's byte count does not match its shape, or names repeat.</exception>
    public static void Write(string path, IEnumerable<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        List<SafetensorsTensor> list = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        byte[] header = BuildHeader(path, list, metadata);
        AtomicFile.Write(path, stream => WriteBody(stream, header, list));
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> and <paramref name="metadata"/> to <paramref name="destination"/> (for callers
    /// that write several files as one <see cref="AtomicFileBatch"/>); <paramref name="name"/> is used in messages.
    /// </summary>
    /// <exception cref="AdapterFormatException">A tensor's byte count does not match its shape, or names repeat.</exception>
    public static void Write(Stream destination, string name, IEnumerable<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(tensors);
        List<SafetensorsTensor> list = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        WriteBody(destination, BuildHeader(name, list, metadata), list);
    }

    private static void WriteBody(Stream stream, byte[] header, List<SafetensorsTensor> list)
    {
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        stream.Write(length);
        stream.Write(header);
        foreach (SafetensorsTensor t in list)
        {
            stream.Write(t.Data.Span);
        }
    }

    private static byte[] BuildHeader(string path, List<SafetensorsTensor> list, IReadOnlyDictionary<string, string>? metadata)
    {
        metadata ??= PtMetadata;
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach ((string k, string v) in metadata.OrderBy(p => p.Key, StringComparer.Ordinal))
                {
                    json.WriteString(k, v);
                }

                json.WriteEndObject();
            }

            var names = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (SafetensorsTensor t in list)
            {
                if (!names.Add(t.Name) || t.Name == "__metadata__")
                {
                    throw new AdapterFormatException($"Cannot write '{path}': tensor name '{t.Name}' is repeated or reserved.");
                }

                long expected = t.DataType.ByteCount(t.Dims.Aggregate(1L, (a, d) => checked(a * d)));
                if (expected != t.Data.Length)
                {
                    throw new AdapterFormatException($"Cannot write '{path}': tensor '{t.Name}' has {t.Data.Length} bytes but shape [{string.Join(",", t.Dims)}] of {t.DataType.ShortName()} needs {expected}.");
                }

                json.WriteStartObject(t.Name);
                json.WriteString("dtype", SafetensorsDataTypes.ToName(t.DataType));
                json.WriteStartArray("shape");
                foreach (long d in t.Dims)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + t.Data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += t.Data.Length;
            }

            json.WriteEndObject();
        }

        // The data section starts 8-byte aligned: pad the header with spaces, as the reference writer does.
        int padded = (int)((buffer.Length + 7) / 8 * 8);
        byte[] header = new byte[padded];
        buffer.GetBuffer().AsSpan(0, (int)buffer.Length).CopyTo(header);
        header.AsSpan((int)buffer.Length).Fill((byte)' ');
        return header;
    }
}
