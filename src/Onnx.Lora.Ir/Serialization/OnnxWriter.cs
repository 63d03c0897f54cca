using System.Globalization;
using Google.Protobuf;
using Onnx.Lora.Ir.Proto;
using Onnx.Lora.Ir.Resources;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>Writes the IR to ONNX files, atomically, with inline or external tensor data.</summary>
public static class OnnxWriter
{
    // Protobuf refuses messages of 2 GiB or more; keep a margin for the graph itself.
    private const long MaxInlineBytes = int.MaxValue - (64L << 20);
    private const int LargeTensorAlignment = 4096;
    private const int SmallTensorAlignment = 64;
    private const long LargeTensorBytes = 64 << 10;

    /// <summary>Saves <paramref name="model"/> to <paramref name="path"/> (and its data file, if any) atomically.</summary>
    /// <exception cref="OnnxSerializationException">The model cannot be written as asked; nothing is left at the destination.</exception>
    /// <exception cref="ResourceLimitException">The destination's file system has less free space than the tensors need; nothing is written.</exception>
    public static void Save(Model model, string path, SaveOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(path);
        options ??= SaveOptions.Default;
        string fullPath = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(fullPath)!;
        ExternalDataMode mode = ResolveMode(model, folder, options.ExternalData);
        // Fail before writing anything rather than with a full disk halfway through a multi-GiB data file.
        SystemResources.EnsureDiskSpace(folder, OutputBytes(model, mode), $"model '{path}'");
        var progress = options.Progress is null ? null : new ProgressCounter(options.Progress, TensorBytes(model, mode));

        try
        {
            using var batch = new AtomicFileBatch();
            string dataName = options.DataFileName ?? Path.GetFileName(fullPath) + ".data";
            // Both names before any work: neither may be an input (the input's own data file given as -o included).
            batch.Reserve(mode == ExternalDataMode.SingleFile ? [Path.Combine(folder, dataName), fullPath] : [fullPath]);
            ModelProto proto;
            if (mode == ExternalDataMode.SingleFile)
            {
                ModelProto? built = null;
                batch.Add(Path.Combine(folder, dataName), stream =>
                    built = ToProto(model, new TensorSink(mode, stream, dataName, options.SizeThreshold, folder) { Progress = progress, Cancellation = options.CancellationToken }));
                proto = built!;
            }
            else
            {
                proto = ToProto(model, new TensorSink(mode, null, null, long.MaxValue, folder) { Progress = progress, Cancellation = options.CancellationToken });
            }

            batch.Add(fullPath, stream =>
            {
                using var output = new CodedOutputStream(stream, leaveOpen: true);
                proto.WriteTo(output);
            });
            batch.Commit();
            progress?.Finish();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or GraphValidationException)
        {
            // Write failures arrive as OutputWriteException (AtomicFileBatch); what is left is the model's own fault.
            throw new OnnxSerializationException($"Cannot save model to '{path}': {e.Message}", e);
        }
    }

    // Tensor bytes the save writes (kept external references cost nothing), plus alignment padding; nodes and names
    // are small beside them.
    private static long OutputBytes(Model model, ExternalDataMode mode)
    {
        long bytes = 0;
        foreach (Value init in model.Graph.Initializers.Values)
        {
            Tensor t = init.Initializer!;
            if (!(mode == ExternalDataMode.Keep && t is ExternalTensor))
            {
                bytes += t.ByteLength + LargeTensorAlignment;
            }
        }

        return bytes;
    }

    // What the progress counts: every tensor the save writes (string tensors and kept references excluded).
    private static long TensorBytes(Model model, ExternalDataMode mode) =>
        model.Graph.Initializers.Values.Select(v => v.Initializer!).Where(t => t is not StringTensor && !(mode == ExternalDataMode.Keep && t is ExternalTensor)).Sum(t => t.ByteLength);

    /// <summary>Adds up written bytes and tells the caller's progress.</summary>
    private sealed class ProgressCounter(IProgress<SaveProgress> progress, long total)
    {
        private long _written;

        public void Add(long bytes)
        {
            _written = Math.Min(total, _written + bytes);
            progress.Report(new SaveProgress(_written, total));
        }

        public void Finish() => progress.Report(new SaveProgress(total, total));
    }

    /// <summary>The model serialized into one byte array, every tensor inline.</summary>
    public static byte[] ToBytes(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return ToProto(model, new TensorSink(ExternalDataMode.Inline, null, null, long.MaxValue, null)).ToByteArray();
    }

    private static ExternalDataMode ResolveMode(Model model, string folder, ExternalDataMode requested)
    {
        bool allInFolder = model.DataFiles.All(f => Path.GetDirectoryName(f.FullPath) == folder);
        switch (requested)
        {
            case ExternalDataMode.Auto:
                return model.DataFiles.Count == 0 ? ExternalDataMode.Keep : allInFolder ? ExternalDataMode.Keep : ExternalDataMode.SingleFile;
            default:
                // NOTE: Keep is checked tensor by tensor while writing (TensorSink), not against model.DataFiles: a
                // model may reference tensors of another model's data file (two graphs sharing one weights file), and
                // may still hold files that no tensor refers to any more.
                return requested;
        }
    }

    private static ModelProto ToProto(Model model, TensorSink sink)
    {
        var proto = new ModelProto
        {
            IrVersion = model.IrVersion,
            ProducerName = model.ProducerName ?? string.Empty,
            ProducerVersion = model.ProducerVersion ?? string.Empty,
            Domain = model.Domain ?? string.Empty,
            ModelVersion = model.ModelVersion,
            DocString = model.DocString ?? string.Empty,
        };
        foreach ((string domain, long version) in model.OpsetImports)
        {
            proto.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        }

        proto.Graph = WriteGraph(model.Graph, sink);
        proto.MetadataProps.Add(Entries(model.MetadataProps));
        proto.Functions.Add(model.Functions.Select(f => FunctionProto.Parser.ParseFrom(f.Span)));
        proto.TrainingInfo.Add(model.TrainingInfo.Select(t => TrainingInfoProto.Parser.ParseFrom(t.Span)));
        UnknownFields.Restore(proto, model.UnknownFields);
        if (sink.InlineBytes > MaxInlineBytes)
        {
            throw new OnnxSerializationException($"The model holds {sink.InlineBytes:N0} bytes of inline tensor data; protobuf files are limited to 2 GiB. Save with external data (single-file mode).");
        }

        return proto;
    }

    private static GraphProto WriteGraph(Graph graph, TensorSink sink)
    {
        var proto = new GraphProto { Name = graph.Name, DocString = graph.DocString ?? string.Empty };
        proto.Input.Add(graph.Inputs.Select(WriteValueInfo));
        proto.Output.Add(graph.Outputs.Select(WriteValueInfo));
        foreach (Value init in graph.Initializers.Values)
        {
            proto.Initializer.Add(sink.Write(init.Initializer!));
        }

        var declared = new HashSet<Value>(graph.Inputs.Concat(graph.Outputs).Concat(graph.Initializers.Values), ReferenceEqualityComparer.Instance);
        foreach (Node node in graph.Nodes)
        {
            proto.Node.Add(WriteNode(node, sink));
            foreach (Value output in node.Outputs)
            {
                if (output.Name.Length > 0 && !declared.Contains(output) && (output.Type is not null || output.DocString is not null || !output.UnknownFields.IsEmpty))
                {
                    proto.ValueInfo.Add(WriteValueInfo(output));
                }
            }
        }

        proto.SparseInitializer.Add(graph.SparseInitializers.Select(s => SparseTensorProto.Parser.ParseFrom(s.Span)));
        proto.QuantizationAnnotation.Add(graph.QuantizationAnnotations.Select(a => TensorAnnotation.Parser.ParseFrom(a.Span)));
        proto.MetadataProps.Add(Entries(graph.MetadataProps));
        UnknownFields.Restore(proto, graph.UnknownFields);
        return proto;
    }

    private static NodeProto WriteNode(Node node, TensorSink sink)
    {
        var proto = new NodeProto
        {
            Name = node.Name,
            OpType = node.OpType,
            Domain = node.Domain,
            Overload = node.Overload ?? string.Empty,
            DocString = node.DocString ?? string.Empty,
        };
        proto.Input.Add(node.Inputs.Select(i => i?.Name ?? string.Empty));
        proto.Output.Add(node.Outputs.Select(o => o.Name));
        foreach (Attr attr in node.Attributes.Values)
        {
            proto.Attribute.Add(WriteAttr(attr, sink));
        }

        proto.MetadataProps.Add(Entries(node.MetadataProps));
        UnknownFields.Restore(proto, node.UnknownFields);
        return proto;
    }

    private static AttributeProto WriteAttr(Attr attr, TensorSink sink)
    {
        var proto = new AttributeProto
        {
            Name = attr.Name,
            Type = (AttributeProto.Types.AttributeType)(int)attr.Type,
            RefAttrName = attr.RefAttrName ?? string.Empty,
            DocString = attr.DocString ?? string.Empty,
        };
        switch (attr.Value)
        {
            case null:
                break;
            case float f:
                proto.F = f;
                break;
            case long i:
                proto.I = i;
                break;
            case byte[] s:
                // No copy: the bytes are only read while this proto is written out.
                proto.S = UnsafeByteOperations.UnsafeWrap(s);
                break;
            case Tensor t:
                // Tensors inside attributes are always inline: ONNX Constant nodes must be self-contained.
                proto.T = TensorSink.Inline.Write(t);
                break;
            case Graph g:
                proto.G = WriteGraph(g, sink);
                break;
            case float[] fs:
                proto.Floats.Add(fs);
                break;
            case long[] ints:
                proto.Ints.Add(ints);
                break;
            case byte[][] ss:
                proto.Strings.Add(ss.Select(b => UnsafeByteOperations.UnsafeWrap(b)));
                break;
            case Tensor[] ts:
                proto.Tensors.Add(ts.Select(TensorSink.Inline.Write));
                break;
            case Graph[] gs:
                proto.Graphs.Add(gs.Select(g => WriteGraph(g, sink)));
                break;
            case ReadOnlyMemory<byte>[] opaque:
                WriteOpaque(proto, attr.Type, opaque);
                break;
            default:
                throw new OnnxSerializationException($"Attribute '{attr.Name}' holds a {attr.Value.GetType().Name}, which cannot be serialized.");
        }

        UnknownFields.Restore(proto, attr.UnknownFields);
        return proto;
    }

    private static void WriteOpaque(AttributeProto proto, AttrType type, ReadOnlyMemory<byte>[] items)
    {
        switch (type)
        {
            case AttrType.SparseTensor:
                proto.SparseTensor = SparseTensorProto.Parser.ParseFrom(items[0].Span);
                break;
            case AttrType.SparseTensors:
                proto.SparseTensors.Add(items.Select(i => SparseTensorProto.Parser.ParseFrom(i.Span)));
                break;
            case AttrType.TypeProto:
                proto.Tp = TypeProto.Parser.ParseFrom(items[0].Span);
                break;
            case AttrType.TypeProtos:
                proto.TypeProtos.Add(items.Select(i => TypeProto.Parser.ParseFrom(i.Span)));
                break;
            default:
                throw new OnnxSerializationException($"Attribute '{proto.Name}' of type {type} cannot hold opaque data.");
        }
    }

    private static ValueInfoProto WriteValueInfo(Value value)
    {
        var proto = new ValueInfoProto { Name = value.Name, DocString = value.DocString ?? string.Empty };
        if (value.Type is { } type)
        {
            proto.Type = WriteType(type);
        }

        proto.MetadataProps.Add(Entries(value.MetadataProps));
        UnknownFields.Restore(proto, value.UnknownFields);
        return proto;
    }

    private static TypeProto WriteType(ValueType type)
    {
        if (!type.IsTensor)
        {
            return TypeProto.Parser.ParseFrom(type.Opaque.Span);
        }

        var tensor = new TypeProto.Types.Tensor { ElemType = (int)type.ElementType };
        if (type.Shape is not null)
        {
            tensor.Shape = new TensorShapeProto();
            foreach (Dim d in type.Shape)
            {
                var dim = new TensorShapeProto.Types.Dimension { Denotation = d.Denotation ?? string.Empty };
                if (d.Value is long v)
                {
                    dim.DimValue = v;
                }
                else if (d.Param is not null)
                {
                    dim.DimParam = d.Param;
                }

                tensor.Shape.Dim.Add(dim);
            }
        }

        return new TypeProto { TensorType = tensor, Denotation = type.Denotation ?? string.Empty };
    }

    private static IEnumerable<StringStringEntryProto> Entries(IEnumerable<KeyValuePair<string, string>> props) =>
        props.Select(p => new StringStringEntryProto { Key = p.Key, Value = p.Value });

    /// <summary>Decides, tensor by tensor, between inline bytes, kept external references and a new data file.</summary>
    private sealed class TensorSink(ExternalDataMode mode, Stream? data, string? dataLocation, long threshold, string? folder)
    {
        public static TensorSink Inline { get; } = new(ExternalDataMode.Inline, null, null, long.MaxValue, null);

        public long InlineBytes { get; private set; }

        public ProgressCounter? Progress { get; init; }

        public CancellationToken Cancellation { get; init; }

        public TensorProto Write(Tensor tensor)
        {
            Cancellation.ThrowIfCancellationRequested();
            var proto = new TensorProto { Name = tensor.Name, DataType = (int)tensor.DataType, DocString = tensor.DocString ?? string.Empty };
            proto.Dims.Add(tensor.Dims);
            if (tensor is StringTensor strings)
            {
                proto.StringData.Add(strings.Strings.Select(b => UnsafeByteOperations.UnsafeWrap(b)));
            }
            else if (tensor is ExternalTensor ext && mode == ExternalDataMode.Keep)
            {
                if (Path.GetDirectoryName(ext.File.FullPath) != folder)
                {
                    throw new OnnxSerializationException($"Cannot keep external data '{ext.File.FullPath}' (tensor '{tensor.Name}') when saving into '{folder}': the model must be saved into the data file's folder, or use single-file or inline external data.");
                }

                AddExternal(proto, ext.File.Location, ext.Offset, ext.Length);
            }
            else if (data is not null && tensor.ByteLength >= threshold)
            {
                long alignment = tensor.ByteLength >= LargeTensorBytes ? LargeTensorAlignment : SmallTensorAlignment;
                long offset = (data.Position + alignment - 1) / alignment * alignment;
                while (data.Position < offset)
                {
                    data.WriteByte(0);
                }

                tensor.WriteTo(data);
                AddExternal(proto, dataLocation!, offset, tensor.ByteLength);
                Progress?.Add(tensor.ByteLength);
            }
            else
            {
                InlineBytes += tensor.ByteLength;
                if (InlineBytes > MaxInlineBytes)
                {
                    throw new OnnxSerializationException($"Tensor '{tensor.Name}' would push inline data past protobuf's 2 GiB limit; save with external data (single-file mode).");
                }

                // No copy: protobuf writes straight from the tensor's memory (mapped or managed).
                proto.RawData = UnsafeByteOperations.UnsafeWrap(tensor.GetBytes());
                Progress?.Add(tensor.ByteLength);
            }

            proto.MetadataProps.Add(Entries(tensor.MetadataProps));
            UnknownFields.Restore(proto, tensor.UnknownFields);
            return proto;
        }

        private static void AddExternal(TensorProto proto, string location, long offset, long length)
        {
            proto.DataLocation = TensorProto.Types.DataLocation.External;
            proto.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
            proto.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(CultureInfo.InvariantCulture) });
            proto.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString(CultureInfo.InvariantCulture) });
        }
    }
}
