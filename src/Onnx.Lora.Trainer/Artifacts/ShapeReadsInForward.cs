using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Makes ONNX Runtime read the shapes the backward pass needs of forward values (Shape and Size nodes in the backward)
/// during the forward pass, right after each value is made, so that a value nothing else keeps, such as the
/// [batch, heads, s, s] attention scores, is released there instead of living until its layer's backward.
/// </summary>
/// <remarks>
/// <para>ONNX Runtime runs nodes in a depth-first order from the graph's leaves, the highest node index first, exploring
/// a node's inputs highest index first (<see cref="GradientOutputOrder"/>). A shape read is a reader of its forward value,
/// not one of the value's inputs, so that walk reaches it only from the backward node that needs the shape: on
/// stories260K's KV-cache conversion, with the gradient writers in layer order, the five layers' attention scores
/// (128 MiB each at 512 × 16) stayed alive until each layer's backward, and the arena's peak grew from 1361 to
/// 2384 MiB.</para>
/// <para>The fix adds one leaf that ORT takes first: a chain of scalar int64 Adds over the reads (each Shape read counted
/// by its Size, placed beside it), ending in the graph output <see cref="Output"/>, with the chain's nodes at the end of the file so the
/// walk goes down the chain first and meets the reads in forward order. Each read is moved right after its value's
/// producer. The same graph then peaked at 1119 MiB in ORT's profiler; every other output is unchanged (the reads
/// compute the same shapes, only earlier).</para>
/// </remarks>
public static class ShapeReadsInForward
{
    /// <summary>Name of the graph output that ends the chain (an int64 scalar nobody needs to fetch).</summary>
    public const string Output = "onnx_lora.forward_shape_reads";

    /// <summary>Name prefix of the nodes the pass adds (the Size of each Shape read and the chain of Adds).</summary>
    public const string NodePrefix = "forward_shape_reads/";

    /// <summary>
    /// Moves every Shape/Size node outside <paramref name="forward"/> that reads a value a forward node makes right after
    /// that node, and chains them into <see cref="Output"/>, the last node of the graph.
    /// </summary>
    /// <param name="model">A training model in topological order, its gradient writers already placed.</param>
    /// <param name="forward">The nodes of the forward pass (before the backward was built).</param>
    /// <param name="early">Values to compute at the end of the forward, before any of the backward (the loss and its
    /// token count): their Sizes close the chain. Without this ORT reached the loss from its output leaf only after the
    /// whole backward, and the forward loss's reads kept the [N, V] scores alive through it (135M shape at 1024 × 1,
    /// the loss lowered but not yet fused: 4976 → 4009 MiB).</param>
    /// <returns>How many shape reads were moved (0 with no early values: the graph is unchanged).</returns>
    public static int Apply(Model model, IReadOnlySet<Node> forward, IReadOnlyList<Value>? early = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(forward);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < graph.Nodes.Count; i++)
        {
            index[graph.Nodes[i]] = i;
        }

        List<(Node Read, Node Producer)> reads = [.. graph.Nodes
            .Where(n => (n.Is("Shape") || n.Is("Size")) && !forward.Contains(n))
            .Select(n => (Read: n, Producer: n.Inputs[0]?.Producer))
            .Where(r => r.Producer is { } p && forward.Contains(p))
            .Select(r => (r.Read, r.Producer!))
            .OrderBy(r => index[r.Item2]).ThenBy(r => index[r.Read])];
        List<Value> late = [.. (early ?? []).Where(v => v.Producer is not null)];
        if (reads.Count == 0 && late.Count == 0)
        {
            return 0;
        }

        // Moved in reverse so that reads of one value keep their relative order after its producer.
        foreach ((Node read, Node producer) in Enumerable.Reverse(reads))
        {
            graph.MoveAfter(producer, read);
        }

        var builder = new GraphBuilder(model) { NamePrefix = NodePrefix };
        Value chain = builder.Initializer(InMemoryTensor.FromInt64s("forward_shape_reads_start", [], [0]));
        foreach ((Node read, _) in reads)
        {
            Value count = read.Outputs[0];
            if (!read.Is("Size"))
            {
                // Beside its read: at the end of the file the walk would take it before the rest of the chain.
                count = builder.Op("Size", [count]);
                graph.MoveAfter(read, count.Producer!);
            }

            chain = builder.Op("Add", [chain, count]);
        }

        foreach (Value value in late)
        {
            Value count = builder.Op("Size", [value]);
            graph.MoveAfter(value.Producer!, count.Producer!);
            chain = builder.Op("Add", [chain, count]);
        }

        builder.Output(chain, Output, DataType.Int64);
        return reads.Count;
    }
}
