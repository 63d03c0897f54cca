namespace Onnx.Lora.Ir.Passes;

/// <summary>
/// Fixes a boolean graph input and replaces every <c>If</c> it drives by the branch that value takes: Optimum's
/// <c>decoder_model_merged.onnx</c> holds the decoder with and without past in one graph behind
/// <c>If(use_cache_branch)</c>; a training step has no past, so with <c>use_cache_branch = false</c> the graph becomes
/// the plain decoder (whose ops the trainer can differentiate; it does not differentiate through If).
/// </summary>
public static class IfBranchInlining
{
    /// <summary>
    /// Inlines the <paramref name="value"/> branch of every If whose condition is the graph input
    /// <paramref name="condition"/>, then removes that input. Branch nodes are copied in place of the If (their
    /// initializers become the graph's), and the If's outputs are the branch's outputs under the If's output names.
    /// </summary>
    /// <returns>How many If nodes were inlined (0 when the graph has no such input).</returns>
    /// <exception cref="GraphValidationException">The input is read by something other than an If's condition, or a
    /// branch holds nested subgraphs.</exception>
    public static int Inline(Model model, string condition, bool value)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(condition);
        Graph graph = model.Graph;
        Value? input = graph.Inputs.FirstOrDefault(v => v.Name == condition);
        if (input is null)
        {
            return 0;
        }

        Usage[] uses = [.. input.Uses];
        int bad = Array.FindIndex(uses, u => !u.Node.Is("If") || u.InputIndex != 0);
        if (bad >= 0)
        {
            Usage other = uses[bad];
            throw new GraphValidationException($"Input '{condition}' is read by '{other.Node.Name}' ({other.Node.OpType}), not only as an If condition; it cannot be fixed to {value}.");
        }

        HashSet<string> taken = graph.UsedNames();
        foreach (Node ifNode in uses.Select(u => u.Node).Distinct())
        {
            Graph branch = ifNode.Attributes[value ? "then_branch" : "else_branch"].AsGraph();
            InlineBranch(graph, ifNode, branch, taken);
        }

        graph.Inputs.Remove(input);
        return uses.Length;
    }

    private static void InlineBranch(Graph graph, Node ifNode, Graph branch, HashSet<string> taken)
    {
        if (branch.Nodes.Any(n => n.Attributes.Values.Any(a => a.Subgraphs().Any())))
        {
            throw new GraphValidationException($"If '{ifNode.Name}': its branch holds nested subgraphs; inlining it is not supported.");
        }

        string Fresh(string name)
        {
            if (name.Length == 0 || taken.Add(name))
            {
                return name;
            }

            string candidate = name;
            for (int i = 2; !taken.Add(candidate); i++)
            {
                candidate = $"{name}_{i}";
            }

            return candidate;
        }

        var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        foreach (Value init in branch.Initializers.Values)
        {
            var copy = new Value(Fresh(init.Name), init.Type);
            graph.Initializers.Add(copy, init.Initializer!);
            map[init] = copy;
        }

        Value Mapped(Value v) => map.TryGetValue(v, out Value? m) ? m : v; // Values of the enclosing graph stay as they are.
        foreach (Node node in branch.Nodes)
        {
            var copy = new Node(node.Domain, node.OpType, node.Inputs.Select(v => v is null ? null : Mapped(v)), node.Outputs.Select(o => Fresh(o.Name)), node.Attributes.Values, Fresh(node.Name))
            {
                DocString = node.DocString,
                Overload = node.Overload,
            };
            copy.MetadataProps.AddRange(node.MetadataProps);
            for (int i = 0; i < node.Outputs.Count; i++)
            {
                copy.Outputs[i].Type = node.Outputs[i].Type;
                map[node.Outputs[i]] = copy.Outputs[i];
            }

            graph.InsertBefore(ifNode, copy);
        }

        for (int i = 0; i < ifNode.Outputs.Count; i++)
        {
            Value result = ifNode.Outputs[i];
            if (!map.TryGetValue(branch.Outputs[i], out Value? made) || branch.Outputs[i].Producer is null)
            {
                // ONNX Runtime refuses such a model too: a branch must make its outputs (an Identity for an outer value).
                throw new GraphValidationException($"If '{ifNode.Name}': branch output '{branch.Outputs[i].Name}' is not made by the branch.");
            }

            if (graph.Outputs.Contains(result))
            {
                // The graph output keeps its name (logits, present.*): the branch's value takes it over.
                string name = result.Name;
                result.Name = Fresh("inlined/" + name);
                made.Name = name;
                made.Type ??= result.Type;
            }

            result.ReplaceAllUsesWith(made, replaceGraphOutputs: true);
        }

        graph.Remove(ifNode);

        // The branches' nodes still count as readers of the values they read outside: let them go.
        foreach (Graph sub in ifNode.Attributes.Values.SelectMany(a => a.Subgraphs()))
        {
            foreach (Node node in sub.Nodes.Reverse().ToArray())
            {
                sub.Remove(node, safe: false);
            }
        }
    }
}
