using Google.FlatBuffers;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Formats;

/// <summary>Reads and writes <c>.onnx_adapter</c> files (and reads ORT GenAI's legacy "GAIL" files).</summary>
public static class OnnxAdapterFormat
{
    /// <summary>File identifier of ONNX Runtime adapter files.</summary>
    public const string Identifier = "TORT";

    /// <summary>File identifier of ORT GenAI's legacy LoRA parameter files.</summary>
    public const string LegacyIdentifier = "GAIL";

    /// <summary>The file extension ORT documents.</summary>
    public const string Extension = ".onnx_adapter";

    // Field indices of the schemas (vtable slots).
    private const int ParamName = 0, ParamDims = 1, ParamDataType = 2, ParamRawData = 3;
    private const int AdapterFormatVersion = 0, AdapterAdapterVersion = 1, AdapterModelVersion = 2, AdapterParameters = 3;
    private const int LegacyVersion = 0, LegacyParameters = 1;

    /// <summary>Serializes <paramref name="adapter"/> to bytes (validated first).</summary>
    /// <exception cref="AdapterFormatException">A parameter's bytes do not match its shape and type, or names repeat.</exception>
    public static byte[] ToBytes(AdapterFile adapter, string destination = "<memory>")
    {
        ArgumentNullException.ThrowIfNull(adapter);
        Validate(adapter, destination);
        long total = adapter.Parameters.Sum(p => p.Data.Length + (p.Dims.Count * 8L) + p.Name.Length + 64) + 64;
        if (total > int.MaxValue)
        {
            throw new AdapterFormatException($"Adapter '{destination}' would be {total} bytes; FlatBuffers files are limited to 2 GiB.");
        }

        var builder = new FlatBufferBuilder((int)total);
        var parameters = new int[adapter.Parameters.Count];
        for (int i = 0; i < parameters.Length; i++)
        {
            AdapterParameter p = adapter.Parameters[i];
            StringOffset name = builder.CreateString(p.Name);
            builder.StartVector(8, p.Dims.Count, 8);
            for (int d = p.Dims.Count - 1; d >= 0; d--)
            {
                builder.AddLong(p.Dims[d]);
            }

            VectorOffset dims = builder.EndVector();

            // NOTE: raw data is 8-byte aligned so a reader can view it as any element type in place.
            builder.StartVector(1, p.Data.Length, 8);
            builder.Add(p.Data.ToArray());
            VectorOffset raw = builder.EndVector();
            builder.StartTable(4);
            builder.AddOffset(ParamRawData, raw.Value, 0);
            builder.AddInt(ParamDataType, (int)p.DataType, 0);
            builder.AddOffset(ParamDims, dims.Value, 0);
            builder.AddOffset(ParamName, name.Value, 0);
            parameters[i] = builder.EndTable();
        }

        builder.StartVector(4, parameters.Length, 4);
        for (int i = parameters.Length - 1; i >= 0; i--)
        {
            builder.AddOffset(parameters[i]);
        }

        VectorOffset list = builder.EndVector();
        builder.StartTable(4);
        builder.AddOffset(AdapterParameters, list.Value, 0);
        builder.AddInt(AdapterModelVersion, adapter.ModelVersion, 0);
        builder.AddInt(AdapterAdapterVersion, adapter.AdapterVersion, 0);
        builder.AddInt(AdapterFormatVersion, adapter.FormatVersion, 0);
        int root = builder.EndTable();
        builder.Finish(root, Identifier);
        return builder.SizedByteArray();
    }

    /// <summary>Writes <paramref name="adapter"/> to <paramref name="path"/> atomically.</summary>
    /// <exception cref="AdapterFormatException">The adapter is invalid; nothing is written.</exception>
    public static void Write(AdapterFile adapter, string path)
    {
        byte[] bytes = ToBytes(adapter, path);
        AtomicFile.WriteAllBytes(path, bytes);
    }

    /// <summary>Reads an adapter file ("TORT" or legacy "GAIL").</summary>
    /// <exception cref="AdapterFormatException">The file is truncated, corrupt, of another version, or inconsistent.</exception>
    public static AdapterFile Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        // Refused before reading: a FIFO or device (/dev/zero would be read until memory runs out).
        byte[] bytes = InputFile.ReadAllBytes(path, "Adapter file", Array.MaxLength, m => new AdapterFormatException(m));
        return Read(bytes, path);
    }

    /// <summary>Reads adapter bytes; <paramref name="source"/> names them in errors.</summary>
    /// <exception cref="AdapterFormatException">The bytes are truncated, corrupt, of another version, or inconsistent.</exception>
    public static AdapterFile Read(ReadOnlyMemory<byte> bytes, string source)
    {
        var view = new FlatBufferView(bytes, source);
        if (view.Length < 8)
        {
            throw new AdapterFormatException($"Adapter file '{source}' is {view.Length} bytes: too short to be a FlatBuffers file.");
        }

        string id = view.Identifier;
        bool legacy = id == LegacyIdentifier;
        if (id != Identifier && !legacy)
        {
            throw new AdapterFormatException($"Adapter file '{source}' has identifier '{Sanitize(id)}'; expected '{Identifier}' (.onnx_adapter) or '{LegacyIdentifier}' (ORT GenAI legacy).");
        }

        int root = view.RootTable("the root table");
        int version = view.ReadIntField(root, legacy ? LegacyVersion : AdapterFormatVersion, 0, "format_version");
        if (version != AdapterFile.CurrentFormatVersion)
        {
            throw new AdapterFormatException($"Adapter file '{source}' has format_version {version}; only {AdapterFile.CurrentFormatVersion} is supported.");
        }

        (int start, int count) = view.Vector(root, legacy ? LegacyParameters : AdapterParameters, 4, "parameters");
        var parameters = new List<AdapterParameter>(count);
        for (int i = 0; i < count; i++)
        {
            parameters.Add(ReadParameter(view, start + (4 * i), i, source));
        }

        var adapter = new AdapterFile
        {
            FormatVersion = version,
            AdapterVersion = legacy ? 0 : view.ReadIntField(root, AdapterAdapterVersion, 0, "adapter_version"),
            ModelVersion = legacy ? 0 : view.ReadIntField(root, AdapterModelVersion, 0, "model_version"),
            SourceFormat = legacy ? AdapterFileFormat.LegacyGenAi : AdapterFileFormat.OnnxAdapter,
            Parameters = parameters,
        };
        Validate(adapter, source);
        return adapter;
    }

    /// <summary>Checks version, unique non-empty names, and that each parameter's bytes equal dims × element size.</summary>
    /// <exception cref="AdapterFormatException">The first problem found, naming the file and the tensor.</exception>
    public static void Validate(AdapterFile adapter, string source)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        if (adapter.FormatVersion != AdapterFile.CurrentFormatVersion)
        {
            throw new AdapterFormatException($"Adapter '{source}' has format_version {adapter.FormatVersion}; only {AdapterFile.CurrentFormatVersion} is supported.");
        }

        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (AdapterParameter p in adapter.Parameters)
        {
            if (string.IsNullOrEmpty(p.Name))
            {
                throw new AdapterFormatException($"Adapter '{source}' has a parameter without a name.");
            }

            if (!names.Add(p.Name))
            {
                throw new AdapterFormatException($"Adapter '{source}' has parameter '{p.Name}' twice.");
            }

            if (p.DataType.BitWidth() == 0)
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' in adapter '{source}' has data type {(int)p.DataType} ({p.DataType}); only numeric types are supported.");
            }

            if (p.Dims.Any(d => d < 0))
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' in adapter '{source}' has a negative dimension in [{string.Join(",", p.Dims)}].");
            }

            long expected;
            try
            {
                expected = p.DataType.ByteCount(p.Dims.Aggregate(1L, (a, d) => checked(a * d)));
            }
            catch (OverflowException e)
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' in adapter '{source}' has dims [{string.Join(",", p.Dims)}] whose size overflows a 64-bit integer.", e);
            }

            if (expected != p.Data.Length)
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' in adapter '{source}' has {p.Data.Length} bytes; dims [{string.Join(",", p.Dims)}] of {p.DataType.ShortName()} need {expected}.");
            }
        }
    }

    private static AdapterParameter ReadParameter(FlatBufferView view, int slot, int index, string source)
    {
        string what = $"parameter #{index}";
        int table = view.Table(slot, what);
        string name = view.String(table, ParamName, what + " name")
            ?? throw new AdapterFormatException($"Adapter file '{source}': {what} has no name.");
        what = $"parameter '{name}'";
        (int dimStart, int dimCount) = view.Vector(table, ParamDims, 8, what + " dims");
        var dims = new long[dimCount];
        for (int d = 0; d < dimCount; d++)
        {
            dims[d] = view.ReadInt64(dimStart + (8 * d), what + " dims");
        }

        var type = (DataType)view.ReadIntField(table, ParamDataType, 0, what + " data_type");
        (int rawStart, int rawCount) = view.Vector(table, ParamRawData, 1, what + " raw_data");
        ReadOnlyMemory<byte> data = rawStart < 0 ? ReadOnlyMemory<byte>.Empty : view.Bytes(rawStart, rawCount);
        return new AdapterParameter(name, type, dims, data);
    }

    private static string Sanitize(string id) => new(id.Select(c => char.IsControl(c) ? '?' : c).ToArray());
}
