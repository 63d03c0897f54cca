using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Places the nodes that produce a training graph's gradient outputs at the end of the file, the one the backward pass
/// finishes last first, so that ONNX Runtime computes each weight gradient right after its layer's backward instead of
/// all of them at the end of the step.
/// </summary>
/// <remarks>
/// <para>ONNX Runtime's sequential executor runs the nodes in a depth-first order from the graph's leaves (nodes nothing
/// reads), the leaf with the highest node index (file position) first. A weight gradient is such a leaf (ORT removes the
/// Identity that names the output and lets its producer write it). When the first leaf taken is the gradient of the
/// first decoder layer, which the backward reaches last, its cone is the whole backward pass, and every other weight
/// gradient runs after it: each keeps its inputs (the layer's input and output gradient, [batch, seq, width] each)
/// alive to the end of the step.</para>
/// <para>Measured with ORT's profiler (arena bytes in use), an 8-layer Llama (width 64, seq 512 × batch 16, LoRA r8
/// all-linear) with recomputation: the step's peak fell from 848 to 466 MiB with this order, the same loss
/// (BENCHMARKS.md, "Real model sizes"; <c>GradientOutputOrderTests</c> checks it on stories260K).</para>
/// </remarks>
public static class GradientOutputOrder
{
    /// <summary>
    /// Moves the producers of <paramref name="gradients"/> (each with the Identity naming it) to the end of
    /// <paramref name="graph"/>: deepest in the backward pass first, so the gradient the backward finishes first gets
    /// the highest index and ONNX Runtime takes it first. The nodes and their links are unchanged; only the order moves.
    /// </summary>
    /// <param name="graph">A training graph in topological order.</param>
    /// <param name="gradients">The gradient outputs.</param>
    /// <returns>How many nodes were moved.</returns>
    public static int Apply(Onnx.Lora.Ir.Graph graph, IEnumerable<Value> gradients)
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(gradients);

        // Longest chain of nodes behind each node: a gradient the backward reaches later sits deeper.
        var depth = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        foreach (Node node in graph.Nodes)
        {
            depth[node] = 1 + node.Inputs.Select(i => i?.Producer is { } p && depth.TryGetValue(p, out int d) ? d : 0).DefaultIfEmpty(0).Max();
        }

        var moves = new List<(Node? Producer, Node Named, int Depth)>();
        var seen = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        foreach (Value gradient in gradients)
        {
            if (gradient.Producer is not { } named || !depth.ContainsKey(named) || !seen.Add(named))
            {
                continue;
            }

            Node? producer = ExclusiveProducer(named);
            if (producer is not null && !seen.Add(producer))
            {
                producer = null;
            }

            moves.Add((producer, named, depth[producer ?? named]));
        }

        // Stable: gradients of equal depth keep their output order.
        List<(Node? Producer, Node Named, int Depth)> ordered = [.. moves.OrderByDescending(m => m.Depth)];
        foreach ((Node? producer, _, _) in ordered)
        {
            if (producer is not null)
            {
                graph.MoveToEnd(producer);
            }
        }

        foreach ((_, Node named, _) in ordered)
        {
            graph.MoveToEnd(named);
        }

        return ordered.Count + ordered.Count(m => m.Producer is not null);
    }

    /// <summary>
    /// The node before the Identity that names a gradient output, when the Identity is its only reader (the node ORT
    /// lets write the output); null otherwise.
    /// </summary>
    public static Node? ExclusiveProducer(Node named)
    {
        ArgumentNullException.ThrowIfNull(named);
        return named.Is("Identity") && named.Inputs.Count == 1 && named.Inputs[0] is { Producer: { } p } input
            && input.Initializer is null && !input.IsGraphOutput && !input.IsGraphInput
            && p.Outputs.All(o => !o.IsGraphOutput && o.Uses.All(u => ReferenceEquals(u.Node, named)))
            ? p : null;
    }
}
