using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Proto;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Reads an ONNX file into the IR. External tensors are validated (location inside the model's folder, file
/// present and long enough, byte ranges not partly overlapping) but not read: their bytes are mapped on first use.
/// </summary>
/// <remarks>
/// NOTE: every failure on a hostile file surfaces as <see cref="OnnxSerializationException"/> naming the file and the
/// tensor / node: nesting is bounded (<see cref="MaxNestingDepth"/> protobuf levels, checked before the stack runs out),
/// declared sizes are checked against the file before anything is allocated (protobuf itself reads huge length
/// prefixes in chunks), and size arithmetic is overflow-checked.
/// </remarks>
public static class OnnxReader
{
    /// <summary>Deepest subgraph (If/Loop/Scan body) nesting accepted: far beyond any exporter, well within a 1 MiB stack.</summary>
    public const int MaxGraphNesting = 128;

    /// <summary>
    /// Deepest protobuf message nesting accepted (protobuf's default is 100, too few for deep If/Loop bodies: each
    /// subgraph level costs three message levels, Graph → Node → Attribute).
    /// </summary>
    public const int MaxNestingDepth = 1000;

    /// <summary>Loads the model at <paramref name="path"/>.</summary>
    /// <exception cref="OnnxSerializationException">The file is missing, is not an ONNX model, or its external data is missing, short or outside the model's folder.</exception>
    public static Model Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(path);
        OnnxReadCounter.Record(full);
        ModelProto proto;
        try
        {
            // A protobuf message cannot exceed 2 GiB; a FIFO or device is refused before it is read.
            using Microsoft.Win32.SafeHandles.SafeFileHandle handle = InputFile.OpenHandle(path, "Model file", int.MaxValue, m => new OnnxSerializationException(m), out FileFacts facts);
            proto = Parse(handle, facts.Size);
        }
        catch (Exception e) when (e is InvalidProtocolBufferException or IOException or UnauthorizedAccessException or InvalidOperationException or ArgumentException)
        {
            throw new OnnxSerializationException($"'{path}' is not a readable ONNX model: {e.Message}", e);
        }

        return FromProto(proto, Path.GetDirectoryName(full)!, path);
    }

    /// <summary>Loads a model from bytes; external data locations resolve against <paramref name="baseDirectory"/>.</summary>
    public static Model Load(ReadOnlyMemory<byte> bytes, string? baseDirectory = null)
    {
        OnnxReadCounter.Record("<memory>");
        ModelProto proto;
        try
        {
            using var stream = new MemoryStream(bytes.ToArray(), writable: false);
            proto = Parse(stream);
        }
        catch (Exception e) when (e is InvalidProtocolBufferException or InvalidOperationException or ArgumentException)
        {
            throw new OnnxSerializationException($"The bytes are not a readable ONNX model: {e.Message}", e);
        }

        return FromProto(proto, baseDirectory is null ? null : Path.GetFullPath(baseDirectory), "<memory>");
    }

    // NOTE: parsed from a lazily read sequence first: protobuf then allocates each bytes field once at its size (from a
    // stream it gathers a large field in chunks and copies them, 2× its size at the peak). Sequences have protobuf's
    // fixed nesting limit of 100; a model nested deeper is parsed again from a stream with MaxNestingDepth.
    private static ModelProto Parse(Microsoft.Win32.SafeHandles.SafeFileHandle handle, long length)
    {
        try
        {
            var proto = new ModelProto();
            proto.MergeFrom(FileSequence.Create(handle, length));
            return proto.Graph is null ? throw new InvalidOperationException("it has no graph (field 7 of ModelProto is missing)") : proto;
        }
        catch (InvalidProtocolBufferException e) when (e.Message.Contains("levels of nesting", StringComparison.Ordinal))
        {
            using var stream = new FileStream(handle, FileAccess.Read, 1 << 16);
            return Parse(stream);
        }
    }

    private static ModelProto Parse(Stream stream)
    {
        // Deep If/Loop nesting exceeds protobuf's default recursion limit of 100. The size limit is the stream's
        // length: no field may claim more bytes than the file has.
        var proto = new ModelProto();
        int sizeLimit = stream.CanSeek ? (int)Math.Clamp(stream.Length, 1, int.MaxValue) : int.MaxValue;
        using var limited = CodedInputStream.CreateWithLimits(stream, sizeLimit, MaxNestingDepth);
        proto.MergeFrom(limited);
        if (proto.Graph is null)
        {
            throw new InvalidOperationException("it has no graph (field 7 of ModelProto is missing)");
        }

        return proto;
    }

    private static Model FromProto(ModelProto proto, string? baseDirectory, string displayPath)
    {
        var context = new OnnxTensorReader(baseDirectory, displayPath);
        try
        {
            Graph graph = new OnnxGraphReader(context, displayPath).ReadGraph(proto.Graph, outer: null);
            // A cycle would surface later as a bare "Graph 'g' has a cycle" from whichever pass sorts first.
            graph.EnsureAcyclic();
            context.CheckExternalRanges();
            return Assemble(proto, graph, context, baseDirectory);
        }
        catch (Exception e) when (e is not OnnxSerializationException
            && e is GraphValidationException or ArgumentException or OverflowException or NotSupportedException or InvalidOperationException or InsufficientExecutionStackException)
        {
            // A safety net for inconsistencies the IR itself rejects (duplicate names, bad shapes): still the model's fault.
            context.DisposeFiles();
            throw new OnnxSerializationException($"{displayPath}: {e.Message}", e);
        }
        catch
        {
            context.DisposeFiles();
            throw;
        }
    }

    private static Model Assemble(ModelProto proto, Graph graph, OnnxTensorReader context, string? baseDirectory)
    {
        var model = new Model(graph)
        {
            IrVersion = proto.IrVersion,
            ProducerName = NullIfEmpty(proto.ProducerName),
            ProducerVersion = NullIfEmpty(proto.ProducerVersion),
            Domain = NullIfEmpty(proto.Domain),
            ModelVersion = proto.ModelVersion,
            DocString = NullIfEmpty(proto.DocString),
            UnknownFields = UnknownFields.Extract(proto),
        };
        model.BaseDirectory = baseDirectory;
        foreach (OperatorSetIdProto opset in proto.OpsetImport)
        {
            model.OpsetImports[opset.Domain == "ai.onnx" ? string.Empty : opset.Domain] = opset.Version;
        }

        model.MetadataProps.AddRange(proto.MetadataProps.Select(p => KeyValuePair.Create(p.Key, p.Value)));
        model.Functions.AddRange(proto.Functions.Select(f => (ReadOnlyMemory<byte>)f.ToByteArray()));
        model.TrainingInfo.AddRange(proto.TrainingInfo.Select(t => (ReadOnlyMemory<byte>)t.ToByteArray()));
        foreach (ExternalDataFile file in context.Files.Values)
        {
            model.AdoptDataFile(file);
        }

        return model;
    }

    internal static string? NullIfEmpty(string s) => s.Length == 0 ? null : s;

    // The array a parsed bytes field owns, without a copy (the parsed proto is dropped after loading): a 300 MB string
    // attribute then costs 300 MB, not 600.
    internal static byte[] Unwrap(ByteString bytes) =>
        MemoryMarshal.TryGetArray(bytes.Memory, out ArraySegment<byte> segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
            ? segment.Array
            : bytes.ToByteArray();
}
