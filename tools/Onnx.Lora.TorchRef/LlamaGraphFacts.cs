using Onnx.Lora.Ir;

namespace Onnx.Lora.TorchRef;

/// <summary>A frozen linear layer of the ONNX graph: y = x·W with W stored [in, out] (torch.onnx MatMul layout).</summary>
internal sealed record LinearWeight(string Module, string NodeName, string Initializer, int In, int Out, float[] Data);

/// <summary>
/// Everything the libtorch peer needs to rebuild a torch-style Llama, recovered from the ONNX graph itself:
/// weights are found through the nodes that use them (module name = node scope, e.g. node
/// <c>/model/layers.0/self_attn/q_proj/MatMul</c> is module <c>model.layers.0.self_attn.q_proj</c>), never through
/// initializer names, so anonymous <c>onnx::MatMul_N</c> weights work too. Constants (eps, attention scale, mask
/// value, RoPE tables, head counts) are read from the initializers the graph actually uses, so both peers compute
/// with the same numbers.
/// </summary>
internal sealed class LlamaGraphFacts
{
    public required int Vocab { get; init; }
    public required int Hidden { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required float Eps { get; init; }
    public required float AttentionDivisor { get; init; }
    public required float PaddingMaskValue { get; init; }
    public required float[] Embedding { get; init; }
    public required int MaxPositions { get; init; }
    public required float[] CausalMask { get; init; }
    public required int RopeWidth { get; init; }
    public required float[] CosTable { get; init; }
    public required float[] SinTable { get; init; }
    public required IReadOnlyDictionary<string, LinearWeight> Linears { get; init; }
    public required IReadOnlyDictionary<string, float[]> Norms { get; init; }

    /// <summary>The LoRA manifest of the model (null for a base model).</summary>
    public LoraManifest? Manifest { get; init; }

    /// <summary>Initial A/B values by tensor name, read from the model's initializers (LoRA models only).</summary>
    public IReadOnlyDictionary<string, float[]> LoraInitial { get; init; } = new Dictionary<string, float[]>();

    public static LlamaGraphFacts Read(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Onnx.Lora.Ir.Graph g = model.Graph;
        LoraManifest? manifest = LoraManifest.Read(model);
        var loraTensors = new HashSet<string>(manifest?.TrainableTensors() ?? [], StringComparer.Ordinal);

        Value ids = g.Inputs.FirstOrDefault(v => v.Name == "input_ids") ?? throw Fail("graph input 'input_ids' is missing");
        Node embed = ids.Uses.Select(u => u.Node).FirstOrDefault(n => n.Is("Gather") && n.Inputs[0]?.Initializer is not null)
            ?? throw Fail("no Gather reads an embedding table with 'input_ids'");
        Tensor embedTable = embed.Inputs[0]!.Initializer!;
        int vocab = (int)embedTable.Dims[0];
        int hidden = (int)embedTable.Dims[1];

        var linears = new Dictionary<string, LinearWeight>(StringComparer.Ordinal);
        var norms = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (Node n in g.Nodes)
        {
            if (n.Is("MatMul") && n.Inputs[1] is { Initializer: { } w } wv && w.Dims.Count == 2 && !loraTensors.Contains(wv.Name))
            {
                string module = ModuleOf(n.Name);
                if (!linears.TryAdd(module, new LinearWeight(module, n.Name, wv.Name, (int)w.Dims[0], (int)w.Dims[1], w.ToFloat32())))
                {
                    throw Fail($"two MatMul nodes map to module '{module}' ({n.Name})");
                }
            }
            else if (n.Is("Mul") && n.Name.Contains("norm", StringComparison.Ordinal)
                && n.Inputs.FirstOrDefault(i => i?.Initializer is { Dims: [var len] } && len == hidden) is { } gamma)
            {
                norms[ModuleOf(n.Name)] = gamma.Initializer!.ToFloat32();
            }
        }

        int layers = linears.Keys.Select(LayerOf).Where(l => l >= 0).DefaultIfEmpty(-1).Max() + 1;
        LinearWeight q = Linear(linears, "model.layers.0.self_attn.q_proj");
        LinearWeight k = Linear(linears, "model.layers.0.self_attn.k_proj");
        long[] qShape = ReshapeShape(q, g);
        long[] kShape = ReshapeShape(k, g);
        if (qShape.Length != 5)
        {
            throw Fail($"q_proj output is reshaped to [{string.Join(",", qShape)}]; only interleaved-pair RoPE ([b,s,h,d/2,2]) is implemented");
        }

        int heads = (int)qShape[2];
        int kvHeads = (int)kShape[2];
        int headDim = q.Out / heads;

        Node normAdd = g.Nodes.FirstOrDefault(n => n.Is("Add") && n.Name.StartsWith("/model/layers.0/input_layernorm/", StringComparison.Ordinal))
            ?? throw Fail("no Add node in /model/layers.0/input_layernorm (RMSNorm eps)");
        float eps = ScalarOf(normAdd, "RMSNorm eps");
        Node scaleNode = g.Nodes.FirstOrDefault(n => n.Is("Div") && n.Name.StartsWith("/model/layers.0/self_attn/", StringComparison.Ordinal) && n.Inputs[1]?.Initializer is not null)
            ?? throw Fail("no Div by a constant in /model/layers.0/self_attn (attention scale)");
        float divisor = ScalarOf(scaleNode, "attention scale");

        Node slice = g.Nodes.FirstOrDefault(n => n.Is("Slice") && n.Inputs[0]?.Initializer is { Dims.Count: 2 })
            ?? throw Fail("no Slice of a constant causal mask");
        Tensor causal = slice.Inputs[0]!.Initializer!;
        Node padMul = g.Nodes.FirstOrDefault(n => n.Is("Mul") && n.Name.StartsWith("/model/Mul", StringComparison.Ordinal) && n.Inputs.Any(i => i?.Initializer is { ElementCount: 1 }))
            ?? throw Fail("no /model/Mul scaling the padding mask by a constant");
        float padValue = ScalarOf(padMul, "padding mask value");

        Tensor cos = RotaryTable(g, "cos");
        Tensor sin = RotaryTable(g, "sin");
        if (cos.Dims[1] * 2 != headDim)
        {
            throw Fail($"RoPE table '{cos.Name}' is [{string.Join(",", cos.Dims)}]; expected width head_dim/2 = {headDim / 2}");
        }

        var loraInitial = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (string name in loraTensors)
        {
            Tensor t = g.Initializers.TryGetValue(name, out Value? v) && v.Initializer is { } init
                ? init
                : throw Fail($"LoRA tensor '{name}' named by the manifest is not an initializer (adapter-slot models are not trainable)");
            loraInitial[name] = t.ToFloat32();
        }

        return new LlamaGraphFacts
        {
            Vocab = vocab,
            Hidden = hidden,
            Layers = layers,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            Eps = eps,
            AttentionDivisor = divisor,
            PaddingMaskValue = padValue,
            Embedding = embedTable.ToFloat32(),
            MaxPositions = (int)causal.Dims[0],
            CausalMask = causal.ToFloat32(),
            RopeWidth = (int)cos.Dims[1],
            CosTable = cos.ToFloat32(),
            SinTable = sin.ToFloat32(),
            Linears = linears,
            Norms = norms,
            Manifest = manifest,
            LoraInitial = loraInitial,
        };
    }

    public LinearWeight Linear(string module) => Linear(Linears, module);

    public float[] Norm(string module) =>
        Norms.TryGetValue(module, out float[]? w) ? w : throw Fail($"no RMSNorm weight for module '{module}'");

    /// <summary><c>/model/layers.0/self_attn/q_proj/MatMul</c> → <c>model.layers.0.self_attn.q_proj</c>.</summary>
    public static string ModuleOf(string nodeName)
    {
        string[] parts = nodeName.Trim('/').Split('/');
        return string.Join('.', parts[..^1]);
    }

    private static int LayerOf(string module)
    {
        const string prefix = "model.layers.";
        if (!module.StartsWith(prefix, StringComparison.Ordinal))
        {
            return -1;
        }

        string rest = module[prefix.Length..];
        return int.Parse(rest[..rest.IndexOf('.', StringComparison.Ordinal)], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static LinearWeight Linear(IReadOnlyDictionary<string, LinearWeight> linears, string module) =>
        linears.TryGetValue(module, out LinearWeight? w) ? w : throw Fail($"no MatMul node for module '{module}' (looked for node '/{module.Replace('.', '/')}/MatMul')");

    private static long[] ReshapeShape(LinearWeight linear, Onnx.Lora.Ir.Graph g)
    {
        Node matmul = g.Nodes.First(n => n.Name == linear.NodeName);
        Value output = matmul.Outputs[0];

        // With LoRA injected, the base MatMul feeds an Add that sums in the branch; the Reshape follows that Add.
        for (int hop = 0; hop < 2; hop++)
        {
            Node? reshape = output.Uses.Select(u => u.Node).FirstOrDefault(n => n.Is("Reshape"));
            if (reshape?.Inputs[1]?.Initializer is { } shape)
            {
                return shape.AsSpan<long>().ToArray();
            }

            Node? add = output.Uses.Select(u => u.Node).FirstOrDefault(n => n.Is("Add"));
            if (add is null)
            {
                break;
            }

            output = add.Outputs[0];
        }

        throw Fail($"the output of '{linear.NodeName}' is not reshaped by a constant shape (cannot read the head count)");
    }

    private static Tensor RotaryTable(Onnx.Lora.Ir.Graph g, string which) =>
        g.Nodes.Where(n => n.Is("Gather") && n.Name.Contains("rotary", StringComparison.Ordinal))
            .Select(n => n.Inputs[0]?.Initializer)
            .FirstOrDefault(t => t is not null && t.Name.Contains(which, StringComparison.Ordinal))
        ?? throw Fail($"no rotary Gather of a '{which}' table");

    private static float ScalarOf(Node node, string what)
    {
        Tensor t = node.Inputs.Select(i => i?.Initializer).FirstOrDefault(i => i is { ElementCount: 1, DataType: DataType.Float })
            ?? throw Fail($"node '{node.Name}' has no float scalar constant ({what})");
        return t.ToFloat32()[0];
    }

    private static GraphValidationException Fail(string message) => new($"Not a torch-style Llama graph: {message}.");
}
