using System.Globalization;
using System.Text.RegularExpressions;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>What <see cref="ActivationRecomputation.Apply"/> did.</summary>
/// <param name="Layers">Decoder layers whose activations are recomputed in the backward pass.</param>
/// <param name="RecomputedNodes">Forward nodes cloned into the backward pass (over all layers).</param>
/// <param name="RecomputedValues">Saved activations the backward pass now reads from a recomputed copy.</param>
public sealed record RecomputationResult(int Layers, int RecomputedNodes, int RecomputedValues);

/// <summary>
/// Activation recomputation (gradient checkpointing per decoder layer, what HF's <c>gradient_checkpointing_enable()</c>
/// does): a pass over a training graph whose backward nodes are already built. For each decoder layer L, every forward
/// value of L that a backward node reads is recomputed from L's inputs just before L's backward, instead of being kept
/// from the forward pass; the forward keeps only what crosses layer boundaries (the residual stream, the mask, the RoPE
/// tables). The math is the same ops on the same inputs: loss and gradients equal those without it up to the rounding of
/// differently fused copies (tested: float64 to 1e-10, float32 to 1e-5 relative; a 135M-shape step's loss to 2e-7).
/// </summary>
/// <remarks>
/// <para>Layers are told by node names (<c>/model/layers.N/…</c>, <c>/model/layers/N/…/lora/…</c>, <c>h.N</c>,
/// <c>blocks.N</c>), the way every exporter we read names them.</para>
/// <para>NOTE: ONNX has no control edges, and ONNX Runtime orders nodes by a depth-first walk from the outputs, so a
/// recomputed copy could run as soon as its inputs exist (right after the forward, holding everything again), and its
/// common-subexpression elimination would fold a copy with the same inputs back into the original. Both are prevented
/// by a data edge: each layer input the copies read passes through <c>Where(c, x, x)</c>, whose condition
/// <c>c</c> is cast from one element of a gradient that arrives at layer L from above. <c>Where(c, x, x) = x</c> for
/// either value of c (NaN included), so the numbers do not change; the copies cannot start before that gradient exists,
/// and their inputs differ from the originals' (measured peak RSS in BENCHMARKS.md, "Real model sizes").</para>
/// <para>Random ops (Dropout, Random*) are not recomputed (a second draw would differ): their outputs stay saved.</para>
/// </remarks>
public static partial class ActivationRecomputation
{
    private static readonly HashSet<string> s_random = ["Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "BiasDropout", "BitmaskDropout", "BitmaskBiasDropout"];

    // Element types ONNX Runtime's CPU Where kernel takes; a layer input of another type is read ungated.
    private static readonly HashSet<DataType> s_gateable = [DataType.Float, DataType.Double, DataType.Int32, DataType.Int64, DataType.UInt8, DataType.Float16, DataType.BFloat16];

    [GeneratedRegex(@"(?:^|/|\.)(?:layers|layer|h|blocks|block)[./](\d+)(?:[./]|$)", RegexOptions.CultureInvariant)]
    private static partial Regex LayerPattern();

    /// <summary>The decoder layer a node belongs to, from its name; null outside layers.</summary>
    public static int? LayerOf(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        Match m = LayerPattern().Match(node.Name);
        return m.Success ? int.Parse(m.Groups[1].ValueSpan, CultureInfo.InvariantCulture) : null;
    }

    /// <summary>
    /// Rewrites the main graph of <paramref name="model"/> (a forward graph with backward nodes appended) so that each
    /// decoder layer's saved activations are recomputed before that layer's backward.
    /// </summary>
    /// <param name="model">The training model.</param>
    /// <param name="forwardNodes">The nodes of the forward pass (all others are backward nodes).</param>
    public static RecomputationResult Apply(Model model, IReadOnlySet<Node> forwardNodes)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(forwardNodes);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        var layers = new SortedDictionary<int, List<Node>>();
        foreach (Node node in graph.Nodes)
        {
            if (forwardNodes.Contains(node) && LayerOf(node) is { } layer)
            {
                if (!layers.TryGetValue(layer, out List<Node>? list))
                {
                    layers[layer] = list = [];
                }

                list.Add(node);
            }
        }

        // How far along the gradient flow each backward node is (longest chain of backward nodes behind it): the gate of
        // a layer waits for the deepest gradient its backward reads, i.e. the one arriving from the layers above.
        var depth = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        foreach (Node node in graph.Nodes.Where(n => !forwardNodes.Contains(n)))
        {
            depth[node] = 1 + node.Inputs.Select(i => i?.Producer is { } p && depth.TryGetValue(p, out int d) ? d : 0).DefaultIfEmpty(0).Max();
        }

        var builder = new GraphBuilder(model) { NamePrefix = "recompute/" };
        int doneLayers = 0, nodes = 0, values = 0;
        foreach ((int layer, List<Node> members) in layers.Reverse())
        {
            var plan = new LayerPlan(forwardNodes, members, depth);
            if (plan.Build() is { } done)
            {
                (int n, int v) = plan.Emit(builder, layer, done);
                doneLayers++;
                nodes += n;
                values += v;
            }
        }

        if (doneLayers > 0)
        {
            graph.SortTopologically();
        }

        return new RecomputationResult(doneLayers, nodes, values);
    }

    private static bool IsRandom(Node node) => s_random.Contains(node.OpType);

    /// <summary>One layer: which values to recompute, which nodes to copy, and the gradient that releases them.</summary>
    private sealed class LayerPlan(IReadOnlySet<Node> forward, List<Node> members, Dictionary<Node, int> depth)
    {
        private readonly HashSet<Node> _members = new(members, ReferenceEqualityComparer.Instance);

        // Nodes of the layer whose outputs depend on a layer input that is an activation (not a weight or constant).
        private readonly HashSet<Node> _dynamic = new(ReferenceEqualityComparer.Instance);

        public sealed record Selection(List<Value> Recomputed, List<Node> Copies, List<Usage> Uses, Value Trigger);

        public Selection? Build()
        {
            foreach (Node node in members)
            {
                if (node.Attributes.Values.Any(a => a.Type is AttrType.Graph or AttrType.Graphs))
                {
                    return null; // Control flow inside a layer: left as it is.
                }

                if (node.Inputs.Any(i => i is not null && (IsActivationInput(i) || (i.Producer is { } p && _dynamic.Contains(p)))))
                {
                    _dynamic.Add(node);
                }
            }

            // Saved activations: values of the layer that backward nodes read and no forward node outside the layer
            // reads (those cross the boundary and are kept anyway).
            var recomputed = new List<Value>();
            var uses = new List<Usage>();
            foreach (Node node in members.Where(n => _dynamic.Contains(n) && !IsRandom(n)))
            {
                foreach (Value v in node.Outputs)
                {
                    if (v.Name.Length == 0 || v.IsGraphOutput || v.Uses.Any(u => forward.Contains(u.Node) && !_members.Contains(u.Node)))
                    {
                        continue;
                    }

                    // A backward Shape/Size read needs no recomputed copy: it keeps the original, and ShapeReadsInForward
                    // runs it in the forward. Rewiring it would put the layer's gradient-reshaping downstream of the
                    // copies and leave no gradient from above to release them.
                    Usage[] backward = v.Uses.Where(u => !forward.Contains(u.Node) && !u.Node.Is("Shape") && !u.Node.Is("Size")).ToArray();
                    if (backward.Length > 0)
                    {
                        recomputed.Add(v);
                        uses.AddRange(backward);
                    }
                }
            }

            if (recomputed.Count == 0)
            {
                return null;
            }

            List<Node> copies = CopiesFor(recomputed);
            return Trigger(uses) is { } trigger ? new Selection(recomputed, copies, uses, trigger) : null;
        }

        /// <summary>Copies the layer's nodes that <paramref name="selection"/> needs, gates their inputs, rewires the backward reads.</summary>
        public (int Nodes, int Values) Emit(GraphBuilder b, int layer, Selection selection)
        {
            string prefix = b.NamePrefix;
            b.NamePrefix = $"recompute/layers.{layer}/";
            try
            {
                Value flat = b.Op("Reshape", [selection.Trigger, b.Int64s(b.FreshName("flat_shape"), -1)]);
                Value first = b.Op("Slice", [flat, b.Int64s(b.FreshName("start"), 0), b.Int64s(b.FreshName("end"), 1)]);
                Value condition = b.Op("Cast", [first], [Attr.Int("to", (long)DataType.Bool)]);
                var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
                foreach (Node node in selection.Copies)
                {
                    var inputs = new Value?[node.Inputs.Count];
                    for (int i = 0; i < inputs.Length; i++)
                    {
                        Value? input = node.Inputs[i];
                        inputs[i] = input is null ? null
                            : map.TryGetValue(input, out Value? copy) ? copy
                            : IsActivationInput(input) && s_gateable.Contains(input.ElementType == DataType.Undefined ? DataType.Float : input.ElementType)
                                ? map[input] = b.Op("Where", [condition, input, input])
                                : input;
                    }

                    IReadOnlyList<Value> outputs = b.OpMulti(node.OpType, inputs, node.Outputs.Count, [.. node.Attributes.Values], node.Domain);
                    for (int k = 0; k < outputs.Count; k++)
                    {
                        outputs[k].Type = node.Outputs[k].Type;
                        map[node.Outputs[k]] = outputs[k];
                    }
                }

                foreach (Usage use in selection.Uses)
                {
                    use.Node.ReplaceInput(use.InputIndex, map[use.Node.Inputs[use.InputIndex]!]);
                }

                return (selection.Copies.Count, selection.Recomputed.Count);
            }
            finally
            {
                b.NamePrefix = prefix;
            }
        }

        /// <summary>An input the layer reads from outside that carries data of the batch (not a weight, not a constant).</summary>
        private bool IsActivationInput(Value v) =>
            v.Initializer is null && (v.Producer is null ? v.IsGraphInput : !_members.Contains(v.Producer) && forward.Contains(v.Producer) && !v.Producer.Is("Constant"));

        /// <summary>The dynamic nodes of the layer on the paths to <paramref name="recomputed"/>, in forward order.</summary>
        private List<Node> CopiesFor(List<Value> recomputed)
        {
            var needed = new HashSet<Node>(ReferenceEqualityComparer.Instance);
            var stack = new Stack<Node>(recomputed.Select(v => v.Producer!));
            while (stack.TryPop(out Node? node))
            {
                if (!needed.Add(node))
                {
                    continue;
                }

                foreach (Value? input in node.Inputs)
                {
                    if (input?.Producer is { } p && _members.Contains(p) && _dynamic.Contains(p) && !IsRandom(p))
                    {
                        stack.Push(p);
                    }
                }
            }

            return members.Where(needed.Contains).ToList();
        }

        /// <summary>
        /// The gradient that releases the recomputation: a value the rewired backward nodes read that backward nodes
        /// produce and that does not depend on those nodes (else the gate would close a cycle); the deepest one, which is
        /// the gradient arriving from the layers above.
        /// </summary>
        private Value? Trigger(List<Usage> uses)
        {
            var users = new HashSet<Node>(uses.Select(u => u.Node), ReferenceEqualityComparer.Instance);
            var downstream = new HashSet<Node>(ReferenceEqualityComparer.Instance);
            var stack = new Stack<Node>(users);
            while (stack.TryPop(out Node? node))
            {
                if (!downstream.Add(node))
                {
                    continue;
                }

                foreach (Value output in node.Outputs)
                {
                    foreach (Usage use in output.Uses)
                    {
                        stack.Push(use.Node);
                    }
                }
            }

            return users.SelectMany(n => n.Inputs)
                .Where(i => i?.Producer is { } p && depth.ContainsKey(p) && !downstream.Contains(p) && p.OutputsAreFloat())
                .MaxBy(i => depth[i!.Producer!]);
        }
    }
}

/// <summary>Small helpers of the recomputation pass.</summary>
internal static class RecomputationNodeExtensions
{
    /// <summary>True unless a known output type says the values are not floating point (a gradient is).</summary>
    public static bool OutputsAreFloat(this Node node) =>
        node.Outputs.All(o => o.ElementType == DataType.Undefined || o.ElementType.IsFloatingPoint()) && !node.OpType.StartsWith("Shape", StringComparison.Ordinal);
}
