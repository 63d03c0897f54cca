using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>What <see cref="BackwardGraph.Build(Model, Value, IReadOnlyList{string}, Value)"/> produced: the gradient value of each trainable tensor.</summary>
/// <param name="Gradients">Gradient value per trainable tensor name, in the order asked for.</param>
/// <param name="DifferentiatedNodes">How many forward nodes got backward nodes.</param>
public sealed record BackwardResult(IReadOnlyDictionary<string, Value> Gradients, int DifferentiatedNodes)
{
    /// <summary>What gradient checkpointing recomputed; null when it was off.</summary>
    public Artifacts.RecomputationResult? Recomputation { get; init; }
}

/// <summary>
/// Reverse-mode automatic differentiation over the graph IR. Appends to the model's main graph the nodes that compute
/// d loss / d t for each trainable tensor t, in standard ONNX ops (plus contrib ops the ORT inference build registers).
/// </summary>
/// <remarks>
/// Only nodes on a path from a trainable tensor to the loss are differentiated: a node is visited when one of its
/// inputs depends on a trainable tensor and one of its outputs reaches the loss, and a rule writes gradients only for
/// such inputs, so frozen weights never get a weight-gradient node. Contributions of a value used several times are
/// summed. Integer and boolean values, non-differentiable ops and inputs (<see cref="OpEntry.Gradient"/>,
/// <see cref="OpEntry.NonDifferentiableInputs"/>: Shape, Range, comparisons, indices, axes) and stop-gradient Identity
/// nodes (<see cref="GraphConventions.IsStopGradient"/>) cut the paths. Each op's VJP is its <see cref="OpTable"/> entry's.
/// </remarks>
public static class BackwardGraph
{
    /// <summary>Differentiates <paramref name="loss"/> w.r.t. the initializers named in <paramref name="trainable"/>.</summary>
    /// <param name="model">Model whose main graph holds the loss; backward nodes are appended to it.</param>
    /// <param name="loss">Scalar loss value of the main graph.</param>
    /// <param name="trainable">Names of trainable initializers (or graph inputs).</param>
    /// <param name="lossGradient">Seed d loss / d loss; a scalar 1 when null.</param>
    /// <exception cref="MissingGradientRuleException">A node on a needed path has no VJP.</exception>
    /// <exception cref="GraphValidationException">A trainable tensor is not in the graph.</exception>
    public static BackwardResult Build(Model model, Value loss, IReadOnlyList<string> trainable, Value? lossGradient = null) =>
        Build(model, loss, trainable, lossGradient, OpTable.Default);

    /// <summary>Differentiates with the ops of <paramref name="table"/>.</summary>
    internal static BackwardResult Build(Model model, Value loss, IReadOnlyList<string> trainable, Value? lossGradient, OpTable table)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(trainable);
        ArgumentNullException.ThrowIfNull(table);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        graph.SortTopologically();
        var facts = new ValueFacts(table);
        var builder = new GraphBuilder(model) { NamePrefix = "grad/" };
        var context = new GradientContext(builder, facts);

        var sources = new List<Value>();
        foreach (string name in trainable)
        {
            Value source = (graph.Initializers.TryGetValue(name, out Value? init) ? init : graph.Inputs.FirstOrDefault(i => i.Name == name))
                ?? throw new GraphValidationException($"Trainable tensor '{name}' is neither an initializer nor an input of graph '{graph.Name}'.");
            sources.Add(source);
        }

        HashSet<Value> active = ForwardReachable(sources, facts, table);
        HashSet<Value> needed = ReachingLoss(loss, active, table);
        Value[] cut = sources.Where(s => !needed.Contains(s)).ToArray();
        if (cut.Length > 0)
        {
            // A trainable tensor with no path to the loss would silently get a zero gradient and never train.
            throw new GraphValidationException(
                $"Trainable tensor(s) {string.Join(", ", cut.Take(5).Select(s => $"'{s.Name}'"))}{(cut.Length > 5 ? $" and {cut.Length - 5} more" : string.Empty)} " +
                $"do not reach the loss '{loss.Name}' through differentiable ops; they would never train.");
        }

        List<Node> order = graph.Nodes.Where(n => n.Outputs.Any(needed.Contains) && n.Inputs.Any(i => i is not null && needed.Contains(i))).ToList();

        var contributions = new Dictionary<Value, List<Value>>(ReferenceEqualityComparer.Instance);
        Value seed = lossGradient ?? context.Scalar(1.0, loss);
        contributions[loss] = [seed];
        var missing = new List<Node>();
        int differentiated = 0;
        for (int k = order.Count - 1; k >= 0; k--)
        {
            Node node = order[k];
            var outputGradients = node.Outputs.Select(o => contributions.TryGetValue(o, out List<Value>? terms) ? Summed(context, terms, o) : null).ToArray();
            if (outputGradients.All(g => g is null))
            {
                continue;
            }

            if (table.Find(node)?.Vjp is not { } vjp)
            {
                missing.Add(node);
                continue;
            }

            bool[] needs = node.Inputs.Select(i => i is not null && needed.Contains(i)).ToArray();
            var step = new BackwardStep(node, outputGradients, needs);
            vjp(context, step);
            differentiated++;
            for (int i = 0; i < node.Inputs.Count; i++)
            {
                if (step.InputGradients[i] is { } g && node.Inputs[i] is { } input)
                {
                    // A gradient has its forward value's shape: recording it lets later rules decide statically which
                    // axes were broadcast instead of asking for shapes at run time.
                    RecordShape(facts, g, input);

                    if (!contributions.TryGetValue(input, out List<Value>? terms))
                    {
                        terms = [];
                        contributions[input] = terms;
                    }

                    terms.Add(g);
                }
            }
        }

        if (missing.Count > 0)
        {
            string list = string.Join("; ", missing.Select(n => $"'{n.Name}' ({(n.Domain.Length > 0 ? n.Domain : "ai.onnx")}::{n.OpType})").Distinct().Take(10));
            throw new MissingGradientRuleException(
                $"No gradient rule for {missing.Count} node(s) on a path from a trainable tensor to the loss: {list}. " +
                $"Supported ops: {string.Join(", ", table.Entries.Where(e => e.Vjp is not null).Select(e => e.OpType).Order(StringComparer.Ordinal))}.");
        }

        var gradients = new Dictionary<string, Value>(StringComparer.Ordinal);
        foreach (Value source in sources)
        {
            Value g = contributions.TryGetValue(source, out List<Value>? terms) ? Summed(context, terms, source) : context.ZerosLike(source);
            gradients[source.Name] = g;
        }

        return new BackwardResult(gradients, differentiated);
    }

    /// <summary>Records that gradient <paramref name="g"/> has the shape of <paramref name="forward"/>, keeping what is already known per axis.</summary>
    private static void RecordShape(ValueFacts facts, Value g, Value forward)
    {
        if (g.Initializer is not null || g.Shape is not null || facts.ShapeOf(forward) is not { } shape)
        {
            return;
        }

        Dim[]? known = facts.ShapeOf(g);
        if (known is not null && known.Length == shape.Length)
        {
            shape = shape.Select((d, i) => d.IsFixed || d.Param is not null ? d : known[i]).ToArray();
        }

        facts.Record(g, facts.TypeOf(g), shape);
    }

    private static Value Summed(GradientContext context, List<Value> terms, Value forward)
    {
        if (terms.Count > 1)
        {
            Value sum = context.Sum(terms);
            RecordShape(context.Facts, sum, forward);
            terms.Clear();
            terms.Add(sum);
        }

        return terms[0];
    }

    /// <summary>True when a gradient can flow from input <paramref name="inputIndex"/> of <paramref name="node"/> to its outputs.</summary>
    private static bool Conducts(Node node, int inputIndex, OpTable table)
    {
        if (GraphConventions.IsStopGradient(node))
        {
            return false;
        }

        // An op without an entry conducts: if it lies on a needed path, the missing VJP is reported.
        OpEntry? entry = table.Find(node);
        return entry is null || (entry.Gradient != Differentiability.None && !entry.NonDifferentiableInputs.Contains(inputIndex));
    }

    private static HashSet<Value> ForwardReachable(List<Value> sources, ValueFacts facts, OpTable table)
    {
        var active = new HashSet<Value>(sources, ReferenceEqualityComparer.Instance);
        var queue = new Queue<Value>(sources);
        while (queue.TryDequeue(out Value? v))
        {
            foreach (Usage use in v.Uses)
            {
                Node node = use.Node;
                if (!Conducts(node, use.InputIndex, table))
                {
                    continue;
                }

                foreach (Value output in node.Outputs)
                {
                    if (output.Name.Length > 0 && facts.IsFloat(output) && active.Add(output))
                    {
                        queue.Enqueue(output);
                    }
                }
            }
        }

        return active;
    }

    private static HashSet<Value> ReachingLoss(Value loss, HashSet<Value> active, OpTable table)
    {
        var needed = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        if (!active.Contains(loss))
        {
            return needed;
        }

        var stack = new Stack<Value>([loss]);
        needed.Add(loss);
        while (stack.TryPop(out Value? v))
        {
            if (v.Producer is not { } node)
            {
                continue;
            }

            for (int i = 0; i < node.Inputs.Count; i++)
            {
                if (node.Inputs[i] is { } input && active.Contains(input) && Conducts(node, i, table) && needed.Add(input))
                {
                    stack.Push(input);
                }
            }
        }

        return needed;
    }
}
