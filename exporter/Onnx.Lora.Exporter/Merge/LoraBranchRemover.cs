using Onnx.Lora.Graph;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>
/// Removes the LoRA branches of a rewritten graph. A node is "LoRA" when it reads a LoRA tensor (A, B, magnitude,
/// scale) directly or through other LoRA nodes. Where a LoRA node's result flows back into the base graph, the
/// result is replaced by the base-path value it combined (the target node's output or a value computed from it),
/// then the LoRA nodes, the helper nodes only they used (dropout, casts), and the LoRA tensors are removed.
/// </summary>
internal static class LoraBranchRemover
{
    public static int Remove(Onnx.Lora.Graph.Graph graph, LoraManifest manifest, string source)
    {
        int removed = 0;
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            var seeds = new HashSet<string>(StringComparer.Ordinal) { info.LoraA, info.LoraB };
            if (info.Magnitude is { } m)
            {
                seeds.Add(m);
            }

            if (info.ScaleTensor is { } s)
            {
                seeds.Add(s);
            }

            removed += RemoveBranch(graph, info, seeds, source);
            foreach (string name in seeds)
            {
                Value? input = graph.Inputs.FirstOrDefault(v => v.Name == name);
                if (input is not null)
                {
                    graph.Inputs.Remove(input);
                }

                if (graph.Initializers.Contains(name) && graph.Initializers[name].Uses.Count == 0)
                {
                    graph.Initializers.Remove(name);
                }
            }
        }

        return removed;
    }

    private static int RemoveBranch(Onnx.Lora.Graph.Graph graph, LoraModuleInfo info, HashSet<string> seeds, string source)
    {
        Node target = graph.Nodes.FirstOrDefault(n => n.Name == info.TargetNode)
            ?? throw new AdapterMismatchException($"Model '{source}' has no node '{info.TargetNode}' (target of module '{info.Module}').");

        // Base path: values computed from the target's output without LoRA. Branch values: computed from LoRA
        // tensors only. A node reading both (Add(y, x·A·B·s)), or extending such a combination with more branch
        // values (DoRA's rescale), is a combine node; nodes that read a combined value and no branch value are the
        // rest of the model and stay.
        var basePath = new HashSet<Value>(target.Outputs);
        var tainted = new HashSet<Node>();
        var branchValues = new HashSet<Value>();
        var combined = new HashSet<Value>();
        bool changed = true;
        while (changed)
        {
            changed = false;
            foreach (Node node in graph.Nodes)
            {
                if (tainted.Contains(node))
                {
                    continue;
                }

                bool readsBranch = node.Inputs.Any(v => v is not null && (seeds.Contains(v.Name) || branchValues.Contains(v)));
                bool readsBase = node.Inputs.Any(v => v is not null && (basePath.Contains(v) || combined.Contains(v)));
                if (readsBranch)
                {
                    tainted.Add(node);
                    (readsBase ? combined : branchValues).UnionWith(node.Outputs);
                    changed = true;
                }
                else if (node.Inputs.Any(v => v is not null && basePath.Contains(v)) && node.Outputs.Any(basePath.Add))
                {
                    changed = true;
                }
            }
        }

        if (tainted.Count == 0)
        {
            return 0;
        }

        // Each LoRA result read outside the branch is replaced by the base-path value its branch combined.
        foreach (Node node in tainted)
        {
            foreach (Value output in node.Outputs)
            {
                bool leaks = output.IsGraphOutput || output.Uses.Any(u => !tainted.Contains(u.Node));
                if (!leaks)
                {
                    continue;
                }

                Value replacement = BasePathInput(output, tainted, basePath)
                    ?? throw new AdapterMismatchException($"Cannot separate the LoRA branch of module '{info.Module}' in '{source}': value '{output.Name}' (node '{node.Name}') does not combine a base-path value.");
                string name = output.Name;
                bool isOutput = output.IsGraphOutput;
                output.ReplaceAllUsesWith(replacement, replaceGraphOutputs: true);
                if (isOutput)
                {
                    output.Name = name + "_lora_removed";
                    replacement.Name = name;
                }
            }
        }

        // Remove LoRA nodes consumers first, then helpers that only fed them (dropout, casts of x).
        int removed = 0;
        var candidates = new HashSet<Node>();
        foreach (Node node in graph.Nodes.Reverse().Where(tainted.Contains).ToList())
        {
            foreach (Value? v in node.Inputs)
            {
                if (v?.Producer is { } p && !tainted.Contains(p))
                {
                    candidates.Add(p);
                }
            }

            graph.Remove(node, safe: true);
            removed++;
        }

        foreach (Node helper in graph.Nodes.Reverse().Where(candidates.Contains).ToList())
        {
            if (helper.Outputs.All(o => o.Uses.Count == 0 && !o.IsGraphOutput))
            {
                graph.Remove(helper, safe: true);
                removed++;
            }
        }

        return removed;
    }

    /// <summary>The base-path value that flows into the branch ending at <paramref name="output"/>, searching back through LoRA nodes.</summary>
    private static Value? BasePathInput(Value output, HashSet<Node> tainted, HashSet<Value> basePath)
    {
        var stack = new Stack<Value>([output]);
        var visited = new HashSet<Value>();
        while (stack.Count > 0)
        {
            Value v = stack.Pop();
            if (!visited.Add(v) || v.Producer is not { } p || !tainted.Contains(p))
            {
                continue;
            }

            foreach (Value? input in p.Inputs)
            {
                if (input is null)
                {
                    continue;
                }

                if (basePath.Contains(input))
                {
                    return input;
                }

                stack.Push(input);
            }
        }

        return null;
    }
}
