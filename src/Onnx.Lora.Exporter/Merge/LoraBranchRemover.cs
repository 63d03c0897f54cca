using Onnx.Lora.Ir;
using Onnx.Lora.Formats;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>
/// Removes the LoRA branches of a rewritten graph. A node is "LoRA" when it reads a LoRA tensor (A, B, magnitude,
/// scale) directly or through other LoRA nodes. Where a LoRA node's result flows back into the base graph, the
/// result is replaced by the base-path value it combined (the target node's output or a value computed from it),
/// then the LoRA nodes, the helper nodes only they used (dropout, casts), and the LoRA tensors are removed.
/// </summary>
internal static class LoraBranchRemover
{
    private const int BranchDepth = 8;

    public static int Remove(Onnx.Lora.Ir.Graph graph, LoraManifest manifest, string source)
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

    private static int RemoveBranch(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, HashSet<string> seeds, string source)
    {
        Node target = graph.Nodes.FirstOrDefault(n => n.Name == info.TargetNode)
            ?? throw new AdapterMismatchException($"Model '{source}' has no node '{info.TargetNode}' (target of module '{info.Module}').");
        RestoreAdaptedWeightInput(target, info, seeds, source);

        // Base path: values computed from the target's output without LoRA. Branch values: computed from LoRA
        // tensors only. A node reading both (Add(y, ((x·A)·s)·B)), or extending such a combination with more branch
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

        if (tainted.Contains(target))
        {
            throw new AdapterMismatchException($"Cannot separate the LoRA branch of module '{info.Module}' in '{source}': its target node '{target.Name}' reads a value computed from LoRA tensors.");
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

        // Remove LoRA nodes consumers first, then helpers that only fed them (dropout, casts and transposes of x, the
        // detached weight norm of DoRA), transitively; then the constants only they read (scale, dropout ratio, 1).
        int removed = 0;
        var candidates = new HashSet<Node>();
        var constants = new HashSet<Value>();
        void Collect(Node node)
        {
            foreach (Value? v in node.Inputs)
            {
                if (v?.Producer is { } p)
                {
                    candidates.Add(p);
                }
                else if (v?.Initializer is not null && !v.IsGraphInput)
                {
                    constants.Add(v);
                }
            }
        }

        foreach (Node node in graph.Nodes.Reverse().Where(tainted.Contains).ToList())
        {
            Collect(node);
            graph.Remove(node, safe: true);
            removed++;
        }

        bool progress = true;
        while (progress)
        {
            progress = false;
            foreach (Node helper in graph.Nodes.Reverse().Where(candidates.Contains).ToList())
            {
                if (helper.Outputs.All(o => o.Uses.Count == 0 && !o.IsGraphOutput))
                {
                    candidates.Remove(helper);
                    Collect(helper);
                    graph.Remove(helper, safe: true);
                    removed++;
                    progress = true;
                }
            }
        }

        foreach (Value constant in constants.Where(c => c.Uses.Count == 0 && !c.IsGraphOutput && graph.Initializers.Contains(c.Name)))
        {
            graph.Initializers.Remove(constant.Name);
        }

        return removed;
    }

    /// <summary>
    /// A target whose weight input itself was adapted (a fused projection inside an attention op reads W + s·A·B)
    /// gets its weight input back: the operand of that Add that does not depend on LoRA tensors.
    /// </summary>
    private static void RestoreAdaptedWeightInput(Node target, LoraModuleInfo info, HashSet<string> seeds, string source)
    {
        for (int i = 0; i < target.Inputs.Count; i++)
        {
            Value? input = target.Inputs[i];
            if (input is null || !DependsOn(input, seeds))
            {
                continue;
            }

            Value? restored = input.Producer is { OpType: "Add" } add ? add.Inputs.FirstOrDefault(v => v is not null && !DependsOn(v, seeds)) : null;
            if (restored is null)
            {
                throw new AdapterMismatchException($"Cannot separate the LoRA branch of module '{info.Module}' in '{source}': input {i} ('{input.Name}') of target node '{target.Name}' is computed from LoRA tensors but is not W + delta.");
            }

            target.ReplaceInput(i, restored);
        }
    }

    /// <summary>
    /// True when <paramref name="value"/> is a LoRA tensor or computed from one within <see cref="BranchDepth"/> nodes
    /// (a weight delta is Add(W, Mul(MatMul(Cast(A), Cast(B)), s))): bounded so that checking a target's activation
    /// input does not walk the whole model above it. A deeper dependency is caught later (the target gets tainted).
    /// </summary>
    private static bool DependsOn(Value value, HashSet<string> seeds, int depth = 0)
    {
        if (seeds.Contains(value.Name))
        {
            return true;
        }

        return depth < BranchDepth && value.Producer is { } p && p.Inputs.Any(v => v is not null && DependsOn(v, seeds, depth + 1));
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
