namespace Onnx.Lora.Ir;

/// <summary>
/// A structural copy of a model: new graphs, nodes and values, the same tensors. Lets one loaded model feed several
/// rewrites (the training graph and the evaluation graph of the same LoRA model) without reading the file again.
/// </summary>
/// <remarks>
/// NOTE: tensors are shared, not copied: their bytes are immutable, so a copy costs the graph only (nodes and value
/// infos), never the weights. Two consequences: external tensors of the copy read through the source's data files,
/// so the source must stay undisposed while the copy is used; and renaming an initializer renames its shared tensor
/// in both models (the rewrites that work on copies replace tensors, they do not rename them).
/// </remarks>
internal static class ModelCopy
{
    public static Model Create(Model source)
    {
        var values = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        var copy = new Model(CopyGraph(source.Graph, values))
        {
            IrVersion = source.IrVersion,
            ProducerName = source.ProducerName,
            ProducerVersion = source.ProducerVersion,
            Domain = source.Domain,
            ModelVersion = source.ModelVersion,
            DocString = source.DocString,
            UnknownFields = source.UnknownFields,
            BaseDirectory = source.BaseDirectory,
        };
        foreach ((string domain, long version) in source.OpsetImports)
        {
            copy.OpsetImports[domain] = version;
        }

        copy.MetadataProps.AddRange(source.MetadataProps);
        copy.Functions.AddRange(source.Functions);
        copy.TrainingInfo.AddRange(source.TrainingInfo);
        return copy;
    }

    // Values are mapped before any node reads them: inputs and initializers first, then every node's outputs (nodes
    // need not be sorted), then the inputs and subgraphs of each node, which may read values of enclosing graphs.
    private static Graph CopyGraph(Graph source, Dictionary<Value, Value> values)
    {
        var graph = new Graph(source.Name)
        {
            DocString = source.DocString,
            UnknownFields = source.UnknownFields,
        };
        graph.MetadataProps.AddRange(source.MetadataProps);
        graph.SparseInitializers.AddRange(source.SparseInitializers);
        graph.QuantizationAnnotations.AddRange(source.QuantizationAnnotations);
        foreach (Value input in source.Inputs)
        {
            graph.Inputs.Add(Map(input, values));
        }

        foreach (Value init in source.Initializers.Values)
        {
            graph.Initializers.Add(Map(init, values), init.Initializer!);
        }

        var nodes = new List<(Node Source, Node Copy)>(source.Nodes.Count);
        foreach (Node node in source.Nodes)
        {
            var copy = new Node(node.Domain, node.OpType, [], node.Outputs.Select(o => o.Name), name: node.Name)
            {
                Overload = node.Overload,
                DocString = node.DocString,
                UnknownFields = node.UnknownFields,
            };
            copy.MetadataProps.AddRange(node.MetadataProps);
            for (int i = 0; i < node.Outputs.Count; i++)
            {
                CopyInfo(node.Outputs[i], copy.Outputs[i]);
                values[node.Outputs[i]] = copy.Outputs[i];
            }

            nodes.Add((node, copy));
        }

        foreach ((Node node, Node copy) in nodes)
        {
            foreach (Value? input in node.Inputs)
            {
                copy.AppendInput(input is null ? null : Map(input, values));
            }

            foreach (Attr attr in node.Attributes.Values)
            {
                copy.SetAttribute(CopyAttr(attr, values));
            }

            graph.Add(copy);
        }

        foreach (Value output in source.Outputs)
        {
            graph.Outputs.Add(Map(output, values));
        }

        return graph;
    }

    private static Attr CopyAttr(Attr attr, Dictionary<Value, Value> values)
    {
        Attr copy = attr.Value switch
        {
            Graph g => Attr.Graph(attr.Name, CopyGraph(g, values)),
            Graph[] gs => Attr.Graphs(attr.Name, gs.Select(g => CopyGraph(g, values)).ToArray()),
            _ => attr, // Scalars, arrays and tensors are never changed in place: shared like the initializers.
        };
        if (!ReferenceEquals(copy, attr))
        {
            copy.RefAttrName = attr.RefAttrName;
            copy.DocString = attr.DocString;
            copy.UnknownFields = attr.UnknownFields;
        }

        return copy;
    }

    private static Value Map(Value source, Dictionary<Value, Value> values)
    {
        if (!values.TryGetValue(source, out Value? copy))
        {
            copy = new Value(source.Name);
            CopyInfo(source, copy);
            values[source] = copy;
        }

        return copy;
    }

    private static void CopyInfo(Value source, Value copy)
    {
        copy.Type = source.Type;
        copy.DocString = source.DocString;
        copy.UnknownFields = source.UnknownFields;
        copy.MetadataProps.AddRange(source.MetadataProps);
    }
}
