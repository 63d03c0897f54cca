using System.Runtime.InteropServices;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Proto;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Reads the tensors of one model load and owns the external data files they map, so the loader can hand them to the
/// model (or close them when the load fails); checks external byte ranges once every tensor is read.
/// </summary>
internal sealed class OnnxTensorReader(string? baseDirectory, string displayPath)
{
    private readonly List<ExternalTensor> _externals = [];

    public Dictionary<string, ExternalDataFile> Files { get; } = new(StringComparer.Ordinal);

    public void DisposeFiles()
    {
        foreach (ExternalDataFile file in Files.Values)
        {
            file.Dispose();
        }
    }

    /// <summary>
    /// Refuses external tensors whose byte ranges partly overlap (a corrupt or hostile index: writing one tensor
    /// would change another). Identical ranges are allowed: exporters may point tied weights at the same bytes.
    /// </summary>
    public void CheckExternalRanges()
    {
        foreach (IGrouping<ExternalDataFile, ExternalTensor> file in _externals.Where(t => t.Length > 0).GroupBy(t => t.File))
        {
            ExternalTensor? previous = null;
            foreach (ExternalTensor t in file.OrderBy(t => t.Offset).ThenBy(t => t.Length))
            {
                if (previous is not null && t.Offset < previous.Offset + previous.Length
                    && !(t.Offset == previous.Offset && t.Length == previous.Length))
                {
                    throw new OnnxSerializationException($"{displayPath}: tensors '{previous.Name}' (bytes {previous.Offset}..{previous.Offset + previous.Length}) and '{t.Name}' (bytes {t.Offset}..{t.Offset + t.Length}) overlap in external data file '{file.Key.Location}'.");
                }

                if (previous is null || t.Offset + t.Length > previous.Offset + previous.Length)
                {
                    previous = t;
                }
            }
        }
    }

    /// <summary>The tensor <paramref name="tp"/> describes: inline bytes copied, external bytes validated and mapped lazily.</summary>
    public Tensor ReadTensor(TensorProto tp)
    {
        var type = (DataType)tp.DataType;
        Tensor tensor;
        try
        {
            tensor = tp.DataLocation == TensorProto.Types.DataLocation.External
                ? ReadExternal(tp, type)
                : ReadInline(tp, type);
        }
        catch (GraphValidationException e)
        {
            throw new OnnxSerializationException($"{displayPath}: {e.Message}", e);
        }
        catch (OverflowException e)
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' has dims [{string.Join(",", tp.Dims)}] whose size overflows a 64-bit integer.", e);
        }

        tensor.DocString = OnnxReader.NullIfEmpty(tp.DocString);
        tensor.MetadataProps.AddRange(tp.MetadataProps.Select(p => KeyValuePair.Create(p.Key, p.Value)));
        tensor.UnknownFields = UnknownFields.Extract(tp);
        return tensor;
    }

    private ExternalTensor ReadExternal(TensorProto tp, DataType type)
    {
        string? location = null;
        long offset = 0;
        long length = -1;
        foreach (StringStringEntryProto entry in tp.ExternalData)
        {
            switch (entry.Key)
            {
                case "location":
                    location = entry.Value;
                    break;
                case "offset":
                    offset = ParseLong(entry.Value, tp.Name, "offset");
                    break;
                case "length":
                    length = ParseLong(entry.Value, tp.Name, "length");
                    break;
            }
        }

        if (string.IsNullOrEmpty(location))
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' is marked external but has no 'location'.");
        }

        if (baseDirectory is null)
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' uses external data '{location}', but the model was loaded from memory without a base directory.");
        }

        if (type != DataType.String && type.BitWidth() == 0)
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' has unsupported data type {(int)type}.");
        }

        if (tp.Dims.Any(d => d < 0))
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' has a negative dimension in [{string.Join(",", tp.Dims)}].");
        }

        ExternalDataFile file = OpenDataFile(location, tp.Name);
        long expected = type == DataType.String ? -1 : type.ByteCount(tp.Dims.Aggregate(1L, (a, d) => checked(a * d)));
        if (length < 0)
        {
            length = expected >= 0 ? expected : file.Length - offset;
        }

        if (expected >= 0 && length != expected)
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tp.Name}' ({type.ShortName()}[{string.Join(",", tp.Dims)}]) declares {length} bytes of external data; its shape needs {expected}.");
        }

        // NOTE: written as a subtraction: offset + length can overflow a long for hostile values.
        if (offset < 0 || length < 0 || offset > file.Length || length > file.Length - offset)
        {
            throw new OnnxSerializationException($"External data file '{file.FullPath}' is too short for tensor '{tp.Name}': needs bytes {offset}..{offset + length}, the file has {file.Length}.");
        }

        var tensor = new ExternalTensor(tp.Name, type, tp.Dims, file, offset, length);
        _externals.Add(tensor);
        return tensor;
    }

    private ExternalDataFile OpenDataFile(string location, string tensorName)
    {
        if (Files.TryGetValue(location, out ExternalDataFile? known))
        {
            return known;
        }

        if (location.Contains('\0', StringComparison.Ordinal))
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tensorName}' has an external data location containing a NUL character.");
        }

        if (Path.IsPathRooted(location) || location.Contains('\\', StringComparison.Ordinal) && Path.IsPathRooted(location.Replace('\\', '/')))
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tensorName}' has an absolute external data location '{location}'; only paths inside the model's folder are allowed.");
        }

        string root = Path.GetFullPath(baseDirectory!);
        string full = Path.GetFullPath(Path.Combine(root, location));
        string rootWithSep = root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar;
        if (!full.StartsWith(rootWithSep, StringComparison.Ordinal))
        {
            throw new OnnxSerializationException($"{displayPath}: tensor '{tensorName}' has external data location '{location}', which escapes the model's folder '{root}'.");
        }

        if (!File.Exists(full) && !Directory.Exists(full) && NativeFile.Probe(full, followLinks: false) is null)
        {
            throw new OnnxSerializationException($"External data file '{full}' (location '{location}' of tensor '{tensorName}' in {displayPath}) does not exist.");
        }

        // NOTE: links at every component (a folder link 'sub -> ..' as much as a file link) and '..' after a link
        // are resolved once, by the kernel's rules; the file opened is the resolved one, so nothing is followed later.
        string realRoot = NativeFile.RealPath(root) ?? root;
        string real = NativeFile.RealPath(full)
            ?? throw new OnnxSerializationException($"External data file '{full}' (location '{location}' of tensor '{tensorName}' in {displayPath}) does not exist (a dangling link).");
        string realRootWithSep = realRoot.EndsWith(Path.DirectorySeparatorChar) ? realRoot : realRoot + Path.DirectorySeparatorChar;
        if (!real.StartsWith(realRootWithSep, StringComparison.Ordinal))
        {
            throw new OnnxSerializationException($"{displayPath}: external data '{location}' of tensor '{tensorName}' is a link to '{real}', outside the model's folder.");
        }

        ExternalDataFile file;
        try
        {
            file = new ExternalDataFile(full, real, location);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OnnxSerializationException($"External data file '{full}' (tensor '{tensorName}') cannot be opened: {e.Message}", e);
        }

        if (file.Kind != FileKind.Regular)
        {
            file.Dispose();
            throw new OnnxSerializationException($"{displayPath}: external data '{location}' of tensor '{tensorName}' is {InputFile.Describe(file.Kind)}, not a regular file.");
        }

        Files[location] = file;
        return file;
    }

    private long ParseLong(string text, string tensor, string key) =>
        long.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long v)
            ? v
            : throw new OnnxSerializationException($"{displayPath}: tensor '{tensor}' has external data {key} '{text}', which is not a non-negative integer.");

    private static Tensor ReadInline(TensorProto tp, DataType type)
    {
        if (type == DataType.String)
        {
            return new StringTensor(tp.Name, tp.Dims, tp.StringData.Select(OnnxReader.Unwrap).ToArray());
        }

        if (type.BitWidth() == 0)
        {
            throw new GraphValidationException($"Tensor '{tp.Name}' has unsupported data type {(int)type}.");
        }

        if (!tp.RawData.IsEmpty)
        {
            return new InMemoryTensor(tp.Name, type, tp.Dims, tp.RawData.Memory);
        }

        return new InMemoryTensor(tp.Name, type, tp.Dims, TypedFieldsToRaw(tp, type));
    }

    private static byte[] TypedFieldsToRaw(TensorProto tp, DataType type)
    {
        switch (type)
        {
            case DataType.Float:
            case DataType.Complex64:
                return MemoryMarshal.AsBytes(tp.FloatData.ToArray().AsSpan()).ToArray();
            case DataType.Double:
            case DataType.Complex128:
                return MemoryMarshal.AsBytes(tp.DoubleData.ToArray().AsSpan()).ToArray();
            case DataType.Int64:
                return MemoryMarshal.AsBytes(tp.Int64Data.ToArray().AsSpan()).ToArray();
            case DataType.UInt64:
            case DataType.UInt32:
                ulong[] u = tp.Uint64Data.ToArray();
                return type == DataType.UInt64
                    ? MemoryMarshal.AsBytes(u.AsSpan()).ToArray()
                    : MemoryMarshal.AsBytes(u.Select(x => (uint)x).ToArray().AsSpan()).ToArray();
            case DataType.Int32:
                return MemoryMarshal.AsBytes(tp.Int32Data.ToArray().AsSpan()).ToArray();
            default:
                // int32_data holds one element per entry for 8/16-bit types and one packed byte per entry for 4-bit types.
                int bits = type.BitWidth();
                int[] ints = tp.Int32Data.ToArray();
                if (bits == 16)
                {
                    return MemoryMarshal.AsBytes(ints.Select(x => (ushort)x).ToArray().AsSpan()).ToArray();
                }

                return ints.Select(x => (byte)x).ToArray();
        }
    }
}
