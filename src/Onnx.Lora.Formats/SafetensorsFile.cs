using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Formats;

/// <summary>One tensor entry of a safetensors header; offsets are relative to the start of the data section.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="DataType">Element type.</param>
/// <param name="Dims">Shape.</param>
/// <param name="Begin">First byte in the data section.</param>
/// <param name="End">One past the last byte in the data section.</param>
public sealed record SafetensorsEntry(string Name, DataType DataType, IReadOnlyList<long> Dims, long Begin, long End)
{
    /// <summary>Bytes of data.</summary>
    public long Length => End - Begin;

    /// <summary>Number of elements.</summary>
    public long ElementCount => Dims.Aggregate(1L, (a, d) => checked(a * d));
}

/// <summary>
/// A safetensors file opened for reading: the header is parsed and validated at open, tensor bytes are read through a
/// memory map only when asked for. Format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}</c>), then the
/// data section, which the tensors must cover exactly, without gaps or overlap.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation's limit): guards against a corrupt length field.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const string MetadataKey = "__metadata__";
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _data;
    private readonly Dictionary<string, SafetensorsEntry> _byName;
    private bool _disposed;

    private SafetensorsFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* data, List<SafetensorsEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        _map = map;
        _view = view;
        _data = data;
        Tensors = entries;
        Metadata = metadata;
        _byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    /// <summary>The file read.</summary>
    public string Path { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<SafetensorsEntry> Tensors { get; }

    /// <summary>The <c>__metadata__</c> map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="AdapterFormatException">The file is not valid safetensors; the message names the file and the tensor.</exception>
    public static SafetensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        long fileLength;
        try
        {
            fileLength = new FileInfo(path).Length;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new AdapterFormatException($"Cannot read safetensors file '{path}': {e.Message}", e);
        }

        if (!File.Exists(path))
        {
            throw new AdapterFormatException($"Safetensors file '{path}' does not exist.");
        }

        // Refuses a FIFO or device before mapping it, and records the file as an input of the running verb.
        InputFile.Check(path, "Safetensors file", long.MaxValue, m => new AdapterFormatException(m));
        if (fileLength < 8)
        {
            throw new AdapterFormatException($"Safetensors file '{path}' is {fileLength} bytes: too short for the 8-byte header length.");
        }

        MemoryMappedFile map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            p += view.PointerOffset;
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(p, 8));
            if (headerLength > MaxHeaderBytes)
            {
                throw new AdapterFormatException($"Safetensors file '{path}' declares a {headerLength}-byte header; the limit is {MaxHeaderBytes} bytes (corrupt or not a safetensors file).");
            }

            if ((long)headerLength > fileLength - 8)
            {
                throw new AdapterFormatException($"Safetensors file '{path}' declares a {headerLength}-byte header but only {fileLength - 8} bytes follow the length field (truncated file).");
            }

            var header = new ReadOnlySpan<byte>(p + 8, (int)headerLength);
            long dataLength = fileLength - 8 - (long)headerLength;
            (List<SafetensorsEntry> entries, Dictionary<string, string> metadata) = ParseHeader(path, header, dataLength);
            return new SafetensorsFile(path, map, view, p + 8 + headerLength, entries, metadata);
        }
        catch
        {
            if (view is not null)
            {
                view.SafeMemoryMappedViewHandle.ReleasePointer();
                view.Dispose();
            }

            map.Dispose();
            throw;
        }
    }

    /// <summary>True when a tensor of that name exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry of <paramref name="name"/>.</summary>
    /// <exception cref="AdapterFormatException">No such tensor.</exception>
    public SafetensorsEntry Entry(string name) =>
        _byName.TryGetValue(name, out SafetensorsEntry? e) ? e : throw new AdapterFormatException($"Safetensors file '{Path}' has no tensor '{name}'.");

    /// <summary>The raw little-endian bytes of <paramref name="name"/> (a view of the mapped file, valid until dispose).</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SafetensorsEntry e = Entry(name);
        if (e.Length > int.MaxValue)
        {
            throw new AdapterFormatException($"Tensor '{name}' in '{Path}' is {e.Length} bytes; tensors over 2 GiB cannot be viewed as one span.");
        }

        return new ReadOnlySpan<byte>(_data + e.Begin, (int)e.Length);
    }

    /// <summary>The values of <paramref name="name"/> converted to float32.</summary>
    public float[] ToFloat32(string name)
    {
        SafetensorsEntry e = Entry(name);
        var result = new float[e.ElementCount];
        try
        {
            TensorConvert.ToFloat32(GetBytes(name), e.DataType, result);
        }
        catch (NotSupportedException ex)
        {
            throw new AdapterFormatException($"Tensor '{name}' in '{Path}' is {e.DataType.ShortName()}; it cannot be read as float: {ex.Message}", ex);
        }

        return result;
    }

    /// <summary>Releases the memory map.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }

        _map?.Dispose();
    }

    /// <summary>Parses and validates a header: entries, dtype sizes, and the exact tiling of the data section.</summary>
    internal static (List<SafetensorsEntry> Entries, Dictionary<string, string> Metadata) ParseHeader(string path, ReadOnlySpan<byte> header, long dataLength)
    {
        // NOTE: JsonDocument accepts invalid UTF-8 inside strings and only fails when a name is read (a raw
        // InvalidOperationException); check the encoding first.
        if (!System.Text.Unicode.Utf8.IsValid(header))
        {
            throw new AdapterFormatException($"Safetensors file '{path}' has a header that is not valid UTF-8 text.");
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header.ToArray());
        }
        catch (JsonException e)
        {
            throw new AdapterFormatException($"Safetensors file '{path}' has a header that is not valid JSON: {e.Message}", e);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new AdapterFormatException($"Safetensors file '{path}' has a header that is not a JSON object.");
            }

            var entries = new List<SafetensorsEntry>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (JsonProperty prop in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(prop.Name))
                {
                    throw new AdapterFormatException($"Safetensors file '{path}' names tensor '{prop.Name}' twice.");
                }

                if (prop.Name == MetadataKey)
                {
                    ReadMetadata(path, prop.Value, metadata);
                    continue;
                }

                entries.Add(ReadEntry(path, prop.Name, prop.Value));
            }

            CheckTiling(path, entries, dataLength);
            return (entries, metadata);
        }
    }

    private static void ReadMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new AdapterFormatException($"Safetensors file '{path}': '__metadata__' must be an object of strings.");
        }

        foreach (JsonProperty m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
            {
                throw new AdapterFormatException($"Safetensors file '{path}': metadata '{m.Name}' is {m.Value.ValueKind}; only strings are allowed.");
            }

            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    private static SafetensorsEntry ReadEntry(string path, string name, JsonElement value)
    {
        string where = $"Tensor '{name}' in safetensors file '{path}'";
        if (value.ValueKind != JsonValueKind.Object
            || !value.TryGetProperty("dtype", out JsonElement dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String
            || !value.TryGetProperty("shape", out JsonElement shapeEl) || shapeEl.ValueKind != JsonValueKind.Array
            || !value.TryGetProperty("data_offsets", out JsonElement offEl) || offEl.ValueKind != JsonValueKind.Array)
        {
            throw new AdapterFormatException($"{where} needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" (array).");
        }

        string dtypeName = dtypeEl.GetString()!;
        DataType type = SafetensorsDataTypes.FromName(dtypeName)
            ?? throw new AdapterFormatException($"{where} has unsupported dtype '{dtypeName}'.");
        var dims = new List<long>();
        foreach (JsonElement d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0)
            {
                throw new AdapterFormatException($"{where} has an invalid shape entry '{d}'.");
            }

            dims.Add(v);
        }

        // NOTE: TryGetInt64 throws (not returns false) on a non-number element, e.g. offsets written as strings.
        if (offEl.GetArrayLength() != 2
            || offEl[0].ValueKind != JsonValueKind.Number || offEl[1].ValueKind != JsonValueKind.Number
            || !offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
        {
            throw new AdapterFormatException($"{where} has invalid data_offsets {offEl}: expected [begin, end] with 0 ≤ begin ≤ end.");
        }

        long expected;
        try
        {
            expected = type.ByteCount(dims.Aggregate(1L, (a, d) => checked(a * d)));
        }
        catch (OverflowException e)
        {
            throw new AdapterFormatException($"{where} has shape [{string.Join(",", dims)}] whose size overflows.", e);
        }

        if (end - begin != expected)
        {
            throw new AdapterFormatException($"{where} spans {end - begin} bytes [{begin},{end}); shape [{string.Join(",", dims)}] of {dtypeName} needs {expected}.");
        }

        return new SafetensorsEntry(name, type, dims, begin, end);
    }

    private static void CheckTiling(string path, List<SafetensorsEntry> entries, long dataLength)
    {
        long cursor = 0;
        SafetensorsEntry? previous = null;
        foreach (SafetensorsEntry e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin < cursor)
            {
                throw new AdapterFormatException($"Tensor '{e.Name}' in safetensors file '{path}' starts at byte {e.Begin}, inside tensor '{previous!.Name}' [{previous.Begin},{previous.End}): overlapping data_offsets.");
            }

            if (e.Begin > cursor)
            {
                throw new AdapterFormatException($"Tensor '{e.Name}' in safetensors file '{path}' starts at byte {e.Begin}; the previous tensor ends at {cursor}: the data section has a gap.");
            }

            cursor = e.End;
            previous = e;
        }

        if (cursor != dataLength)
        {
            string last = previous is null ? "no tensor" : $"tensor '{previous.Name}'";
            throw new AdapterFormatException($"Safetensors file '{path}' has a {dataLength}-byte data section but its tensors cover {cursor} bytes (last: {last}): truncated or trailing data.");
        }
    }
}
