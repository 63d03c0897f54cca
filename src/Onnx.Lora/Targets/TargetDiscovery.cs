using Onnx.Lora.Ir;
using Onnx.Lora.Families;

namespace Onnx.Lora.Targets;

using Graph = Onnx.Lora.Ir.Graph;

/// <summary>
/// Finds every linear layer LoRA can adapt in a model's main graph and names it as PEFT names modules.
/// Reads no weight data: only names, shapes and attributes.
/// </summary>
public static class TargetDiscovery
{
    /// <summary>The op handlers, first match wins.</summary>
    public static IReadOnlyList<ILoraTargetMatcher> Matchers { get; } =
        [new MatMulMatcher(), new GemmMatcher(), new MatMulNBitsMatcher(), new FusedAttentionMatcher(), new ConvMatcher(), new EmbeddingMatcher()];

    /// <summary>Names of the ops a target can be, for error messages.</summary>
    public static string SupportedOps => string.Join(", ", Matchers.Select(m => m.OpName));

    private static readonly HashSet<string> s_attentionOps = new(StringComparer.Ordinal)
    {
        "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention", "SparseAttention",
    };

    /// <summary>Matches one node with the first handler for its op.</summary>
    public static MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        foreach (ILoraTargetMatcher matcher in Matchers)
        {
            MatchResult<LinearTarget> result = matcher.Match(node);
            if (result.Success)
            {
                return result;
            }

            if (node.OpType == matcher.OpName.Split(' ')[0])
            {
                return result;
            }
        }

        return MatchResult<LinearTarget>.Fail($"{node.OpType} '{node.Name}' is not a supported linear op (supported: {SupportedOps})");
    }

    /// <summary>
    /// Every targetable linear layer of <paramref name="model"/>'s main graph in graph order, named, with output heads
    /// marked. LoRA parameters of an already adapted model are not targets.
    /// </summary>
    public static IReadOnlyList<LinearTarget> Find(Model model) => FindAll(model).Where(t => t.IsLinear).ToList();

    /// <summary>
    /// Every target of <paramref name="model"/>'s main graph in graph order, named: the linear layers of
    /// <see cref="Find"/> plus Conv layers and embedding lookups (which only explicit names or a regex select).
    /// </summary>
    public static IReadOnlyList<LinearTarget> FindAll(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Graph graph = model.Graph;
        var loraTensors = new HashSet<string>(LoraManifest.Read(model)?.TrainableTensors() ?? [], StringComparer.Ordinal);
        var found = new List<LinearTarget>();
        foreach (Node node in graph.Nodes)
        {
            MatchResult<LinearTarget> match = Match(node);
            if (match.Success && !IsLoraParameter(match.Value!.Weight.Name, loraTensors))
            {
                found.Add(match.Value!);
            }
        }

        var structure = new Lazy<LayerStructure>(() => new LayerStructure(graph, s_attentionOps));
        var named = new List<LinearTarget>(found.Count);
        var used = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (LinearTarget t in found)
        {
            ModuleName name = ModuleNaming.Resolve(new NamingHints
            {
                NodeName = t.Node.Name,
                OpType = t.Node.OpType,
                WeightName = t.Weight.Name,
                OutputName = t.Node.Outputs[0].Name,
                StructuralLayer = NeedsStructure(t) ? structure.Value.LayerOf(t.Node) : null,
            });
            string module = name.Name;
            if (used.TryGetValue(module, out int count))
            {
                // Two layers that name to the same module (e.g. unnamed nodes): keep names unique and stable.
                used[module] = count + 1;
                module = $"{module}_{count}";
            }
            else
            {
                used[module] = 1;
            }

            bool head = t.IsLinear && (name.Role == ModuleRole.OutputHead || IsStructuralHead(t));
            named.Add(t with
            {
                Module = module,
                LayerIndex = name.LayerIndex ?? ModuleNaming.ParseLayerIndex(module),
                Role = head ? ModuleRole.OutputHead : name.Role,
                IsOutputHead = head,
            });
        }

        return named;
    }

    private static bool IsLoraParameter(string name, HashSet<string> manifestTensors) =>
        manifestTensors.Contains(name) || name.Contains(".lora_A.", StringComparison.Ordinal) || name.Contains(".lora_B.", StringComparison.Ordinal);

    // Names without a layer index anywhere need the graph structure to place the layer.
    private static bool NeedsStructure(LinearTarget t) =>
        ModuleNaming.ParseLayerIndex(t.Node.Name.Replace('/', '.')) is null && ModuleNaming.ParseLayerIndex(t.Weight.Name) is null;

    /// <summary>The logits projection: its output is the graph output 'logits', or its weight is the (tied) token embedding.</summary>
    private static bool IsStructuralHead(LinearTarget t)
    {
        if (!t.IsLinear)
        {
            return false;
        }

        Value output = t.Node.Outputs[0];
        if (output.IsGraphOutput && output.Name.Contains("logits", StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }

        // Tied embeddings: the same table feeds a Gather (the embedding lookup) and, transposed, the logits MatMul.
        return t.Weight.Uses.Any(u => u.Node.Is("Gather") && u.InputIndex == 0);
    }

    /// <summary>Decoder layer of a node by graph structure: which attention op it feeds or follows.</summary>
    private sealed class LayerStructure
    {
        private readonly Dictionary<Node, int> _position = new(ReferenceEqualityComparer.Instance);
        private readonly List<(Node Node, int Position)> _attention = [];

        public LayerStructure(Graph graph, HashSet<string> attentionOps)
        {
            for (int i = 0; i < graph.Nodes.Count; i++)
            {
                Node n = graph.Nodes[i];
                _position[n] = i;
                if (attentionOps.Contains(n.OpType) && !n.IsStandardDomain)
                {
                    _attention.Add((n, i));
                }
            }
        }

        public int? LayerOf(Node node)
        {
            if (_attention.Count == 0)
            {
                return null;
            }

            // q/k/v feed their layer's attention op within a few reshapes; anything else belongs to the last attention before it.
            int? fed = FeedsAttention(node);
            if (fed is not null)
            {
                return fed;
            }

            int position = _position.GetValueOrDefault(node, int.MaxValue);
            int before = _attention.Count(a => a.Position < position);
            return before == 0 ? 0 : before - 1;
        }

        private int? FeedsAttention(Node start)
        {
            var frontier = new Queue<(Node Node, int Depth)>();
            frontier.Enqueue((start, 0));
            var seen = new HashSet<Node>(ReferenceEqualityComparer.Instance) { start };
            while (frontier.TryDequeue(out var item))
            {
                foreach (Value output in item.Node.Outputs)
                {
                    foreach (Usage use in output.Uses)
                    {
                        int index = _attention.FindIndex(a => ReferenceEquals(a.Node, use.Node));
                        if (index >= 0)
                        {
                            return index;
                        }

                        if (item.Depth < 4 && !use.Node.Is("MatMul") && !use.Node.Is("Gemm") && seen.Add(use.Node))
                        {
                            frontier.Enqueue((use.Node, item.Depth + 1));
                        }
                    }
                }
            }

            return null;
        }
    }
}
