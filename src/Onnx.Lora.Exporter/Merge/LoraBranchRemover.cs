using Onnx.Lora.Ir;
using Onnx.Lora.Formats;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>
/// Removes the LoRA branches inject added, as inject tagged them (<see cref="LoraTags"/>): for each module, every value
/// its tagged nodes hand to the base graph is replaced by the base value the tag names, then the tagged nodes, the
/// tagged initializers and the tensors the manifest names (A, B, magnitude, scale; slot inputs included) are removed.
/// Nothing is inferred from the graph's shape, so what stays is exactly what inject found.
/// </summary>
internal static class LoraBranchRemover
{
    /// <summary>Removes every module of <paramref name="manifest"/> from <paramref name="graph"/>; returns the nodes removed.</summary>
    /// <exception cref="LegacyLoraModelException">The model was injected by a version that did not tag its nodes.</exception>
    /// <exception cref="AdapterMismatchException">A tag is inconsistent with the graph (a tagged value read by the base graph names no base value).</exception>
    public static int Remove(Onnx.Lora.Ir.Graph graph, LoraManifest manifest, string source)
    {
        var byModule = new Dictionary<string, List<Node>>(StringComparer.Ordinal);
        foreach (Node node in graph.Nodes)
        {
            if (LoraTags.ModuleOf(node) is { } module)
            {
                if (!byModule.TryGetValue(module, out List<Node>? nodes))
                {
                    byModule[module] = nodes = [];
                }

                nodes.Add(node);
            }
        }

        if (manifest.Modules.Count > 0 && byModule.Count == 0)
        {
            throw LegacyLoraModelException.For(source);
        }

        int removed = 0;
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            List<Node> nodes = byModule.GetValueOrDefault(info.Module)
                ?? throw new AdapterMismatchException($"Model '{source}': no node carries the tag of module '{info.Module}' ({LoraTags.ModuleKey}); its LoRA branch cannot be told from the base graph.");
            removed += RemoveModule(graph, info, nodes, source);
        }

        return removed;
    }

    private static int RemoveModule(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, List<Node> nodes, string source)
    {
        var branch = new HashSet<Node>(nodes);
        foreach (Node node in nodes)
        {
            foreach (Value output in node.Outputs)
            {
                if (output.IsGraphOutput || output.Uses.Any(u => !branch.Contains(u.Node)))
                {
                    HandBack(graph, info, node, output, source);
                }
            }
        }

        // Consumers first: the graph is in topological order, so its reverse never removes a value still read.
        for (int i = nodes.Count - 1; i >= 0; i--)
        {
            graph.Remove(nodes[i], safe: true);
        }

        var tensors = new HashSet<string>(StringComparer.Ordinal) { info.LoraA, info.LoraB };
        tensors.UnionWith(new[] { info.Magnitude, info.ScaleTensor }.OfType<string>());
        tensors.UnionWith(graph.Initializers.Values.Where(v => v.Initializer is { } t && LoraTags.ModuleOf(t) == info.Module).Select(v => v.Name));
        foreach (Value input in graph.Inputs.Where(v => tensors.Contains(v.Name)).ToList())
        {
            graph.Inputs.Remove(input);
        }

        foreach (string name in tensors)
        {
            if (!graph.Initializers.TryGetValue(name, out Value? value))
            {
                continue;
            }

            if (value.IsGraphOutput)
            {
                throw new AdapterMismatchException($"Model '{source}': LoRA tensor '{name}' of module '{info.Module}' is a graph output.");
            }

            if (value.Uses.Count > 0)
            {
                Node reader = value.Uses[0].Node;
                throw new AdapterMismatchException($"Model '{source}': LoRA tensor '{name}' of module '{info.Module}' is read by node '{reader.Name}' ({reader.OpType}), which is not part of its branch.");
            }

            graph.Initializers.Remove(name);
        }

        return nodes.Count;
    }

    /// <summary>The base graph reads <paramref name="output"/> of a branch node: give it back the base value the node's tag names.</summary>
    private static void HandBack(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, Node node, Value output, string source)
    {
        string baseName = LoraTags.ReplacedValueOf(node)
            ?? throw new AdapterMismatchException($"Model '{source}': value '{output.Name}' of LoRA node '{node.Name}' (module '{info.Module}') is read outside its branch, but the node names no base value ({LoraTags.ReplacesKey}).");
        Value replacement = graph.FindValue(baseName)
            ?? throw new AdapterMismatchException($"Model '{source}': LoRA node '{node.Name}' (module '{info.Module}') replaces value '{baseName}', which the graph does not have.");
        string name = output.Name;
        bool isOutput = output.IsGraphOutput;
        output.ReplaceAllUsesWith(replacement, replaceGraphOutputs: true);
        if (isOutput)
        {
            // Inject kept the graph output's name on the branch result; the base value takes it back.
            output.Name = name + "_lora_removed";
            replacement.Name = name;
        }
    }
}
