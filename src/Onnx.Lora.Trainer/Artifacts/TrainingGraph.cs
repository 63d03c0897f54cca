using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Autodiff;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Turns a model whose graph already computes a scalar loss into the training or the evaluation artifact graph.
/// Training: inputs = batch tensors + trainable tensors (inputs with initializer defaults, so the initial values
/// travel with the file), outputs = loss, token count, one gradient per trainable tensor. Evaluation: same inputs,
/// outputs = loss and token count. Everything the outputs do not need (logits, KV cache outputs) is pruned.
/// </summary>
public static class TrainingGraph
{
    /// <summary>Name of the loss output.</summary>
    public const string LossOutput = "loss";

    /// <summary>Name of the counted-token output.</summary>
    public const string TokenCountOutput = "token_count";

    /// <summary>Name of the gradient output of trainable tensor <paramref name="parameter"/>.</summary>
    public static string GradientOutput(string parameter) => parameter + "_grad";

    /// <summary>Makes <paramref name="model"/> the training graph (in place).</summary>
    /// <param name="model">Model holding the loss.</param>
    /// <param name="loss">Scalar loss value.</param>
    /// <param name="tokenCount">Scalar count of the tokens (or samples) the loss averages over; null to output 1.</param>
    /// <param name="trainable">Trainable initializer names.</param>
    /// <param name="recomputeActivations">Gradient checkpointing: recompute each decoder layer's activations in the
    /// backward pass instead of keeping them (<see cref="ActivationRecomputation"/>).</param>
    /// <returns>The backward result (gradient values by name).</returns>
    /// <exception cref="MissingGradientRuleException">An op on a path from a trainable tensor to the loss has no rule.</exception>
    /// <param name="orderGradientOutputs">Place the gradient writers at the end, deepest first (<see cref="GradientOutputOrder"/>), and
    /// have the backward's shape reads of forward values run in the forward (<see cref="ShapeReadsInForward"/>).</param>
    public static BackwardResult MakeTraining(Model model, Value loss, Value? tokenCount, IReadOnlyList<string> trainable, bool recomputeActivations = false, bool orderGradientOutputs = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(trainable);
        LinearCrossEntropy.Fuse(model, [.. trainable]);
        var forward = new HashSet<Node>(model.Graph.Nodes, ReferenceEqualityComparer.Instance);
        BackwardResult result = BackwardGraph.Build(model, loss, trainable);
        if (recomputeActivations)
        {
            result = result with { Recomputation = ActivationRecomputation.Apply(model, forward) };
        }

        CrossEntropyLowering.Apply(model);
        LinearCrossEntropy.Lower(model);
        var builder = new GraphBuilder(model);
        var outputs = new List<Value> { Named(builder, loss, LossOutput), Named(builder, tokenCount ?? builder.Scalar("token_count_one", 1f), TokenCountOutput) };
        foreach (string name in trainable)
        {
            outputs.Add(Named(builder, result.Gradients[name], GradientOutput(name)));
        }

        Finish(model, outputs, trainable);
        if (orderGradientOutputs)
        {
            GradientOutputOrder.Apply(model.Graph, outputs.Skip(2));
            ShapeReadsInForward.Apply(model, forward, [loss, .. tokenCount is null ? Array.Empty<Value>() : [tokenCount]]);
        }

        return result;
    }

    /// <summary>Makes <paramref name="model"/> the evaluation graph (in place): loss, token count and the named metric sums.</summary>
    /// <param name="model">Model holding the loss.</param>
    /// <param name="loss">Scalar loss value.</param>
    /// <param name="tokenCount">Scalar count of the tokens (or samples) the loss averages over; null to output 1.</param>
    /// <param name="trainable">Trainable initializer names.</param>
    /// <param name="metrics">Extra scalar outputs by output name (e.g. correct predictions), or null.</param>
    public static void MakeEvaluation(Model model, Value loss, Value? tokenCount, IReadOnlyList<string> trainable, IReadOnlyList<(string Name, Value Value)>? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(trainable);
        LinearCrossEntropy.Fuse(model, [.. trainable]);
        LinearCrossEntropy.Lower(model);
        CrossEntropyLowering.Apply(model);
        var builder = new GraphBuilder(model);
        List<Value> outputs = [Named(builder, loss, LossOutput), Named(builder, tokenCount ?? builder.Scalar("token_count_one", 1f), TokenCountOutput)];
        outputs.AddRange((metrics ?? []).Select(m => Named(builder, m.Value, m.Name)));
        Finish(model, outputs, trainable);
    }

    private static Value Named(GraphBuilder builder, Value value, string name)
    {
        Value output = builder.Op("Identity", [value], name: name + "_output");
        output.Name = name;
        return output;
    }

    private static void Finish(Model model, List<Value> outputs, IReadOnlyList<string> trainable)
    {
        Onnx.Lora.Ir.Graph graph = model.Graph;
        graph.Outputs.Clear();
        graph.Outputs.AddRange(outputs);
        foreach (string name in trainable)
        {
            Value value = graph.Initializers[name];
            if (!graph.Inputs.Contains(value))
            {
                graph.Inputs.Add(value);
            }
        }

        GraphPruning.RemoveUnused(graph);
        if (model.IrVersion < 4)
        {
            // Inputs with initializer defaults need IR 4 or newer.
            model.IrVersion = 4;
        }
    }
}

/// <summary>Dead-code removal: nodes whose outputs nothing reads, initializers nothing reads, unused graph inputs are kept.</summary>
public static class GraphPruning
{
    /// <summary>Removes nodes (and then initializers) that no graph output depends on.</summary>
    /// <returns>Number of nodes removed.</returns>
    public static int RemoveUnused(Onnx.Lora.Ir.Graph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        var live = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var stack = new Stack<Value>(graph.Outputs);
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        while (stack.TryPop(out Value? v))
        {
            if (!seen.Add(v) || v.Producer is not { } node || !ReferenceEquals(node.Graph, graph) || !live.Add(node))
            {
                continue;
            }

            foreach (Value? input in node.Inputs.Concat(node.ImplicitInputs()))
            {
                if (input is not null)
                {
                    stack.Push(input);
                }
            }
        }

        int removed = 0;
        for (int i = graph.Nodes.Count - 1; i >= 0; i--)
        {
            Node node = graph.Nodes[i];
            if (!live.Contains(node))
            {
                graph.Remove(node, safe: false);
                removed++;
            }
        }

        foreach (Value init in graph.Initializers.Values.ToArray())
        {
            if (init.Uses.Count == 0 && !graph.Outputs.Contains(init) && !graph.Inputs.Contains(init))
            {
                graph.Initializers.Remove(init.Name);
            }
        }

        return removed;
    }
}
