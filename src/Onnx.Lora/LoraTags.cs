// LoRA tags: what inject adds is marked where ONNX keeps facts about one node or one tensor, so that merge and the
// serving export remove exactly that, instead of rediscovering the branch by walking the graph:
//
//   every node inject adds          NodeProto.metadata_props    onnx_lora.module   = <module>
//   the node whose output took over the uses of a base value (the branch's combine: Add(y, s·x·A·B), DoRA's last
//   node, or W + s·A·B feeding a fused attention op)
//                                   NodeProto.metadata_props    onnx_lora.replaces = <name of that base value>
//   every initializer inject adds   TensorProto.metadata_props  onnx_lora.module   = <module>
//
// Removing a module = give each value its tagged nodes hand back to the base graph the value named by onnx_lora.replaces,
// then drop the tagged nodes, the tagged initializers and the tensors the manifest names (A, B, magnitude, scale;
// those are tagged too, but the trainer writes its trained A and B as fresh tensors).
// NOTE: metadata_props (ONNX IR 10) is where torch.onnx (pkg.torch.onnx.*) and onnx_ir keep per-node facts. Our reader
// and writer keep them bit for bit, and ONNX Runtime loads and runs a tagged model unchanged (it reads no node or
// tensor metadata). Node names and doc_strings would not do: exporters and optimizers rename nodes and overwrite
// doc_strings, and a name is no statement of ownership.
using Onnx.Lora.Ir;

namespace Onnx.Lora;

/// <summary>The metadata keys that mark what inject added to a graph, and how to read and write them.</summary>
public static class LoraTags
{
    /// <summary>Metadata key on every node and initializer inject adds: the PEFT name of the module it belongs to.</summary>
    public const string ModuleKey = "onnx_lora.module";

    /// <summary>Metadata key on the node whose output took over the uses of a base value: that base value's name.</summary>
    public const string ReplacesKey = "onnx_lora.replaces";

    /// <summary>The module <paramref name="node"/> was added for, or null for a node of the base graph.</summary>
    public static string? ModuleOf(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Get(node.MetadataProps, ModuleKey);
    }

    /// <summary>The module <paramref name="tensor"/> was added for, or null for a tensor of the base graph.</summary>
    public static string? ModuleOf(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        return Get(tensor.MetadataProps, ModuleKey);
    }

    /// <summary>The name of the base value whose uses <paramref name="node"/>'s output took over, or null.</summary>
    public static string? ReplacedValueOf(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Get(node.MetadataProps, ReplacesKey);
    }

    /// <summary>Marks <paramref name="node"/> as added for <paramref name="module"/>.</summary>
    public static void Tag(Node node, string module)
    {
        ArgumentNullException.ThrowIfNull(node);
        Set(node.MetadataProps, ModuleKey, module);
    }

    /// <summary>Marks <paramref name="tensor"/> as added for <paramref name="module"/>.</summary>
    public static void Tag(Tensor tensor, string module)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        Set(tensor.MetadataProps, ModuleKey, module);
    }

    /// <summary>Records on <paramref name="node"/> that its output took over the uses of <paramref name="baseValue"/>.</summary>
    public static void MarkReplaces(Node node, Value baseValue)
    {
        ArgumentNullException.ThrowIfNull(node);
        ArgumentNullException.ThrowIfNull(baseValue);
        Set(node.MetadataProps, ReplacesKey, baseValue.Name);
    }

    /// <summary>True when some node of <paramref name="graph"/> carries a module tag (the model was written by a tagging inject).</summary>
    public static bool HasTags(Onnx.Lora.Ir.Graph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        return graph.Nodes.Any(n => ModuleOf(n) is not null);
    }

    /// <summary>
    /// Remembers what <paramref name="graph"/> holds now; <see cref="AddedSince.TagAdded"/> later tags every node and
    /// initializer added since with a module.
    /// </summary>
    public static AddedSince Snapshot(Onnx.Lora.Ir.Graph graph) => new(graph);

    private static string? Get(List<KeyValuePair<string, string>> props, string key)
    {
        foreach (KeyValuePair<string, string> p in props)
        {
            if (p.Key == key)
            {
                return p.Value;
            }
        }

        return null;
    }

    // ONNX asks metadata keys to be distinct: a second tag replaces the first.
    private static void Set(List<KeyValuePair<string, string>> props, string key, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        props.RemoveAll(p => p.Key == key);
        props.Add(KeyValuePair.Create(key, value));
    }

    /// <summary>The nodes and initializers of a graph at one moment, to tag what is added after it.</summary>
    public sealed class AddedSince
    {
        private readonly Onnx.Lora.Ir.Graph _graph;
        private readonly HashSet<Node> _nodes;
        private readonly HashSet<string> _initializers;

        internal AddedSince(Onnx.Lora.Ir.Graph graph)
        {
            ArgumentNullException.ThrowIfNull(graph);
            _graph = graph;
            _nodes = [.. graph.Nodes];
            _initializers = new HashSet<string>(graph.Initializers.Values.Select(v => v.Name), StringComparer.Ordinal);
        }

        /// <summary>Tags every node and initializer added since the snapshot with <paramref name="module"/>; returns the nodes.</summary>
        public IReadOnlyList<Node> TagAdded(string module)
        {
            ArgumentNullException.ThrowIfNull(module);
            var added = new List<Node>();
            foreach (Node node in _graph.Nodes)
            {
                if (!_nodes.Contains(node))
                {
                    Tag(node, module);
                    added.Add(node);
                }
            }

            foreach (Value value in _graph.Initializers.Values)
            {
                if (!_initializers.Contains(value.Name) && value.Initializer is { } tensor)
                {
                    Tag(tensor, module);
                }
            }

            return added;
        }
    }
}
