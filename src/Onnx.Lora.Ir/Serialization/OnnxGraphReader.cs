using Google.Protobuf;
using Onnx.Lora.Ir.Proto;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>Reads a graph and its subgraphs (If/Loop/Scan bodies) into the IR, resolving names through nested scopes.</summary>
internal sealed class OnnxGraphReader(OnnxTensorReader tensors, string displayPath)
{
    /// <summary>Reads <paramref name="proto"/>; names it does not define resolve in <paramref name="outer"/> (a subgraph's enclosing graphs).</summary>
    public Graph ReadGraph(GraphProto proto, Scope? outer)
    {
        // Real exporters nest If/Loop bodies a few levels deep; a fixed bound makes hostile nesting fail the same
        // way on every machine, and the stack probe still guards threads with unusually small stacks.
        if ((outer?.Depth ?? 0) >= OnnxReader.MaxGraphNesting || !System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
        {
            throw new OnnxSerializationException($"{displayPath}: graph '{proto.Name}' is nested too deeply to read.");
        }

        var graph = new Graph(proto.Name)
        {
            DocString = OnnxReader.NullIfEmpty(proto.DocString),
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
            Tensor tensor = tensors.ReadTensor(tp);
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
                Overload = OnnxReader.NullIfEmpty(np.Overload),
                DocString = OnnxReader.NullIfEmpty(np.DocString),
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
            AttrType.String => OnnxReader.Unwrap(ap.S),
            AttrType.Tensor => ap.T is null ? null : tensors.ReadTensor(ap.T),
            AttrType.Graph => ap.G is null ? null : ReadGraph(ap.G, scope),
            AttrType.Floats => ap.Floats.ToArray(),
            AttrType.Ints => ap.Ints.ToArray(),
            AttrType.Strings => ap.Strings.Select(OnnxReader.Unwrap).ToArray(),
            AttrType.Tensors => ap.Tensors.Select(tensors.ReadTensor).ToArray(),
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
        attr.RefAttrName = OnnxReader.NullIfEmpty(ap.RefAttrName);
        attr.DocString = OnnxReader.NullIfEmpty(ap.DocString);
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

    private static void ApplyInfo(Value value, ValueInfoProto info)
    {
        if (info.Type is not null)
        {
            value.Type = ReadType(info.Type);
        }

        value.DocString = OnnxReader.NullIfEmpty(info.DocString);
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
                Denotation = OnnxReader.NullIfEmpty(d.Denotation),
            }).ToArray());
        return new ValueType { ElementType = (DataType)t.ElemType, Shape = shape, Denotation = OnnxReader.NullIfEmpty(tp.Denotation) };
    }

    /// <summary>The values a graph defines, with its enclosing graphs' behind it.</summary>
    internal sealed class Scope(Scope? outer)
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
