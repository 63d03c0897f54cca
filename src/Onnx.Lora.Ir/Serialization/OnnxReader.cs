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
        var context = new ReadContext(baseDirectory, displayPath);
        try
        {
            Graph graph = context.ReadGraph(proto.Graph, outer: null);
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

    private static Model Assemble(ModelProto proto, Graph graph, ReadContext context, string? baseDirectory)
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
    private static byte[] Unwrap(ByteString bytes) =>
        MemoryMarshal.TryGetArray(bytes.Memory, out ArraySegment<byte> segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
            ? segment.Array
            : bytes.ToByteArray();

    private sealed class ReadContext(string? baseDirectory, string displayPath)
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

        public Graph ReadGraph(GraphProto proto, Scope? outer)
        {
            // Real exporters nest If/Loop bodies a few levels deep; a fixed bound makes hostile nesting fail the same
            // way on every machine, and the stack probe still guards threads with unusually small stacks.
            if ((outer?.Depth ?? 0) >= MaxGraphNesting || !System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            {
                throw new OnnxSerializationException($"{displayPath}: graph '{proto.Name}' is nested too deeply to read.");
            }

            var graph = new Graph(proto.Name)
            {
                DocString = NullIfEmpty(proto.DocString),
                UnknownFields = UnknownFields.Extract(proto),
            };
            graph.MetadataProps.AddRange(proto.MetadataProps.Select(p => KeyValuePair.Create(p.Key, p.Value)));
            graph.SparseInitializers.AddRange(proto.SparseInitializer.Select(s => (ReadOnlyMemory<byte>)s.ToByteArray()));
            graph.QuantizationAnnotations.AddRange(proto.QuantizationAnnotation.Select(a => (ReadOnlyMemory<byte>)a.ToByteArray()));
            var scope = new Scope(outer);

            foreach (ValueInfoProto info in proto.Input)
            {
                var value = new Value(info.Name);
                ApplyInfo(value, info);
                graph.Inputs.Add(value);
                scope.Define(value);
            }

            foreach (TensorProto tp in proto.Initializer)
            {
                Tensor tensor = ReadTensor(tp);
                if (scope.TryGetLocal(tp.Name, out Value? input) && graph.Inputs.Contains(input))
                {
                    graph.Initializers.Add(input, tensor);
                }
                else if (graph.Initializers.Contains(tp.Name))
                {
                    throw new OnnxSerializationException($"{displayPath}: graph '{proto.Name}' has two initializers named '{tp.Name}'.");
                }
                else
                {
                    var value = new Value(tp.Name, ValueType.Tensor(tensor.DataType, Shape.Of(tensor.Dims.Select(d => new Dim(d)).ToArray())));
                    graph.Initializers.Add(value, tensor);
                    scope.Define(value);
                }
            }

            // Pass 1 creates every node and its outputs, so inputs can be resolved even in unsorted graphs.
            var nodes = new List<(Node Node, NodeProto Proto)>(proto.Node.Count);
            foreach (NodeProto np in proto.Node)
            {
                var node = new Node(np.Domain, np.OpType, [], np.Output, name: np.Name)
                {
                    Overload = NullIfEmpty(np.Overload),
                    DocString = NullIfEmpty(np.DocString),
                    UnknownFields = UnknownFields.Extract(np),
                };
                node.MetadataProps.AddRange(np.MetadataProps.Select(p => KeyValuePair.Create(p.Key, p.Value)));
                foreach (Value output in node.Outputs)
                {
                    if (output.Name.Length > 0)
                    {
                        scope.Define(output);
                    }
                }

                nodes.Add((node, np));
            }

            // Last one wins on duplicate value_info names (as onnx's shape inference merges them), no exception.
            var infos = new Dictionary<string, ValueInfoProto>(StringComparer.Ordinal);
            foreach (ValueInfoProto info in proto.ValueInfo)
            {
                infos[info.Name] = info;
            }

            foreach ((Node node, NodeProto np) in nodes)
            {
                foreach (string inputName in np.Input)
                {
                    if (inputName.Length == 0)
                    {
                        node.AppendInput(null);
                    }
                    else if (scope.TryResolve(inputName, out Value? input))
                    {
                        node.AppendInput(input);
                    }
                    else
                    {
                        throw new OnnxSerializationException($"{displayPath}: node '{np.Name}' ({np.OpType}) in graph '{proto.Name}' reads '{inputName}', which no input, initializer or node defines.");
                    }
                }

                foreach (AttributeProto ap in np.Attribute)
                {
                    node.SetAttribute(ReadAttr(ap, scope, np));
                }

                foreach (Value output in node.Outputs)
                {
                    if (infos.TryGetValue(output.Name, out ValueInfoProto? info))
                    {
                        ApplyInfo(output, info);
                    }
                }

                graph.Add(node);
            }

            foreach (ValueInfoProto info in proto.Output)
            {
                if (!scope.TryResolve(info.Name, out Value? output))
                {
                    throw new OnnxSerializationException($"{displayPath}: graph '{proto.Name}' output '{info.Name}' is not produced by any node, input or initializer.");
                }

                ApplyInfo(output, info);
                graph.Outputs.Add(output);
            }

            return graph;
        }

        private Attr ReadAttr(AttributeProto ap, Scope scope, NodeProto np)
        {
            var type = (AttrType)(int)ap.Type;
            if (type == AttrType.Undefined)
            {
                type = InferAttrType(ap);
            }

            object? value = type switch
            {
                AttrType.Float => ap.F,
                AttrType.Int => ap.I,
                AttrType.String => Unwrap(ap.S),
                AttrType.Tensor => ap.T is null ? null : ReadTensor(ap.T),
                AttrType.Graph => ap.G is null ? null : ReadGraph(ap.G, scope),
                AttrType.Floats => ap.Floats.ToArray(),
                AttrType.Ints => ap.Ints.ToArray(),
                AttrType.Strings => ap.Strings.Select(Unwrap).ToArray(),
                AttrType.Tensors => ap.Tensors.Select(ReadTensor).ToArray(),
                AttrType.Graphs => ap.Graphs.Select(g => ReadGraph(g, scope)).ToArray(),
                AttrType.SparseTensor => ap.SparseTensor is null ? null : new ReadOnlyMemory<byte>[] { ap.SparseTensor.ToByteArray() },
                AttrType.SparseTensors => ap.SparseTensors.Select(s => (ReadOnlyMemory<byte>)s.ToByteArray()).ToArray(),
                AttrType.TypeProto => ap.Tp is null ? null : new ReadOnlyMemory<byte>[] { ap.Tp.ToByteArray() },
                AttrType.TypeProtos => ap.TypeProtos.Select(t => (ReadOnlyMemory<byte>)t.ToByteArray()).ToArray(),
                _ => throw new OnnxSerializationException($"{displayPath}: attribute '{ap.Name}' of node '{np.Name}' ({np.OpType}) has unknown type {(int)ap.Type}."),
            };
            Attr attr = value switch
            {
                null => Attr.Empty(ap.Name, type),
                float f => Attr.Float(ap.Name, f),
                long i => Attr.Int(ap.Name, i),
                byte[] s => Attr.Bytes(ap.Name, s),
                Tensor t => Attr.Tensor(ap.Name, t),
                Graph g => Attr.Graph(ap.Name, g),
                float[] fs => Attr.Floats(ap.Name, fs),
                long[] ints => Attr.Ints(ap.Name, ints),
                byte[][] ss => Attr.BytesList(ap.Name, ss),
                Tensor[] ts => Attr.Tensors(ap.Name, ts),
                Graph[] gs => Attr.Graphs(ap.Name, gs),
                ReadOnlyMemory<byte>[] opaque => Attr.Opaque(ap.Name, type, opaque),
                _ => throw new InvalidOperationException("unreachable"),
            };
            attr.RefAttrName = NullIfEmpty(ap.RefAttrName);
            attr.DocString = NullIfEmpty(ap.DocString);
            attr.UnknownFields = UnknownFields.Extract(ap);
            return attr;
        }

        private static AttrType InferAttrType(AttributeProto ap)
        {
            // Very old exporters leave `type` unset; infer it from the populated field.
            if (ap.Floats.Count > 0) { return AttrType.Floats; }
            if (ap.Ints.Count > 0) { return AttrType.Ints; }
            if (ap.Strings.Count > 0) { return AttrType.Strings; }
            if (ap.Tensors.Count > 0) { return AttrType.Tensors; }
            if (ap.Graphs.Count > 0) { return AttrType.Graphs; }
            if (ap.T is not null) { return AttrType.Tensor; }
            if (ap.G is not null) { return AttrType.Graph; }
            if (!ap.S.IsEmpty) { return AttrType.String; }
            if (ap.F != 0) { return AttrType.Float; }
            return AttrType.Int;
        }

        private Tensor ReadTensor(TensorProto tp)
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

            tensor.DocString = NullIfEmpty(tp.DocString);
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
                return new StringTensor(tp.Name, tp.Dims, tp.StringData.Select(Unwrap).ToArray());
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

        private static void ApplyInfo(Value value, ValueInfoProto info)
        {
            if (info.Type is not null)
            {
                value.Type = ReadType(info.Type);
            }

            value.DocString = NullIfEmpty(info.DocString);
            value.MetadataProps.Clear();
            value.MetadataProps.AddRange(info.MetadataProps.Select(p => KeyValuePair.Create(p.Key, p.Value)));
            value.UnknownFields = UnknownFields.Extract(info);
        }

        private static ValueType ReadType(TypeProto tp)
        {
            if (tp.ValueCase != TypeProto.ValueOneofCase.TensorType || !UnknownFields.Extract(tp).IsEmpty)
            {
                return new ValueType { Opaque = tp.ToByteArray() };
            }

            TypeProto.Types.Tensor t = tp.TensorType;
            Shape? shape = t.Shape is null
                ? null
                : new Shape(t.Shape.Dim.Select(d => new Dim
                {
                    Value = d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? d.DimValue : null,
                    Param = d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam ? d.DimParam : null,
                    Denotation = NullIfEmpty(d.Denotation),
                }).ToArray());
            return new ValueType { ElementType = (DataType)t.ElemType, Shape = shape, Denotation = NullIfEmpty(tp.Denotation) };
        }
    }

    private sealed class Scope(Scope? outer)
    {
        /// <summary>Graphs between this scope and the main graph's (0 for the main graph).</summary>
        public int Depth { get; } = outer is null ? 0 : outer.Depth + 1;

        private readonly Dictionary<string, Value> _values = new(StringComparer.Ordinal);

        public void Define(Value value) => _values[value.Name] = value;

        public bool TryGetLocal(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Value? value) => _values.TryGetValue(name, out value);

        public bool TryResolve(string name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Value? value)
        {
            for (Scope? s = this; s is not null; s = s.Outer)
            {
                if (s._values.TryGetValue(name, out value))
                {
                    return true;
                }
            }

            value = null;
            return false;
        }

        private Scope? Outer => outer;
    }
}
