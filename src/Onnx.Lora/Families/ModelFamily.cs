namespace Onnx.Lora.Families;

/// <summary>Where a linear layer sits in a transformer block; decides the PEFT container name when a graph lacks one.</summary>
public enum ModuleRole
{
    /// <summary>Not known.</summary>
    Unknown,

    /// <summary>An attention projection (q, k, v, o, fused qkv).</summary>
    Attention,

    /// <summary>An MLP projection (gate, up, down, fc).</summary>
    Mlp,

    /// <summary>The output head (lm_head): excluded from all-linear as PEFT excludes it.</summary>
    OutputHead,
}

/// <summary>
/// What one model family calls its linear layers: the canonical projection names as PEFT (and the HF module tree)
/// uses them, the aliases other exporters use for the same layers, and the layer containers of the module tree.
/// </summary>
public sealed record ModelFamily
{
    /// <summary>Family name (for messages and inspect output).</summary>
    public required string Name { get; init; }

    /// <summary>Canonical projection names and their role, e.g. q_proj → Attention.</summary>
    public required IReadOnlyDictionary<string, ModuleRole> Projections { get; init; }

    /// <summary>Other names of the same projections (as hand-made or converted graphs call them) → canonical name.</summary>
    public IReadOnlyDictionary<string, string> Aliases { get; init; } = new Dictionary<string, string>();

    /// <summary>Container of an attention projection when the graph names none (PEFT/HF: self_attn).</summary>
    public string AttentionContainer { get; init; } = "self_attn";

    /// <summary>Container of an MLP projection when the graph names none.</summary>
    public string MlpContainer { get; init; } = "mlp";

    /// <summary>Module path of decoder layer N when the graph names none: format with the index.</summary>
    public string LayerPrefixFormat { get; init; } = "model.layers.{0}";

    /// <summary>
    /// When set, the family names a projection only inside one of these containers (the path component before it):
    /// T5's <c>q</c> and <c>wo</c> are its own names in <c>SelfAttention</c> / <c>DenseReluDense</c>, while a bare
    /// <c>q</c> elsewhere is a compact graph's alias of q_proj.
    /// </summary>
    public IReadOnlySet<string>? Containers { get; init; }
}

/// <summary>The families this toolchain knows, in lookup order.</summary>
public static class KnownFamilies
{
    /// <summary>
    /// T5 / mT5 / Flan-T5 (encoder-decoder): PEFT names their layers as the torch modules are named, q/k/v/o in
    /// SelfAttention and EncDecAttention, wi/wo (wi_0/wi_1 gated) in DenseReluDense.
    /// </summary>
    public static ModelFamily T5 { get; } = new()
    {
        Name = "t5",
        Projections = new Dictionary<string, ModuleRole>(StringComparer.Ordinal)
        {
            ["q"] = ModuleRole.Attention,
            ["k"] = ModuleRole.Attention,
            ["v"] = ModuleRole.Attention,
            ["o"] = ModuleRole.Attention,
            ["wi"] = ModuleRole.Mlp,
            ["wi_0"] = ModuleRole.Mlp,
            ["wi_1"] = ModuleRole.Mlp,
            ["wo"] = ModuleRole.Mlp,
        },
        AttentionContainer = "SelfAttention",
        MlpContainer = "DenseReluDense",
        LayerPrefixFormat = "encoder.block.{0}",
        Containers = new HashSet<string>(StringComparer.Ordinal) { "SelfAttention", "EncDecAttention", "DenseReluDense" },
    };

    /// <summary>Llama, Mistral, Qwen, Phi-3 and the GenAI model builder (torch module names).</summary>
    public static ModelFamily Llama { get; } = new()
    {
        Name = "llama",
        Projections = new Dictionary<string, ModuleRole>(StringComparer.Ordinal)
        {
            ["q_proj"] = ModuleRole.Attention,
            ["k_proj"] = ModuleRole.Attention,
            ["v_proj"] = ModuleRole.Attention,
            ["o_proj"] = ModuleRole.Attention,
            ["qkv_proj"] = ModuleRole.Attention,
            ["gate_proj"] = ModuleRole.Mlp,
            ["up_proj"] = ModuleRole.Mlp,
            ["down_proj"] = ModuleRole.Mlp,
            ["gate_up_proj"] = ModuleRole.Mlp,
        },

        // llama2.c / Meta checkpoints (wq, w1..w3) and compact hand-made graphs (q, dn) name the same layers.
        Aliases = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["q"] = "q_proj",
            ["k"] = "k_proj",
            ["v"] = "v_proj",
            ["o"] = "o_proj",
            ["wq"] = "q_proj",
            ["wk"] = "k_proj",
            ["wv"] = "v_proj",
            ["wo"] = "o_proj",
            ["qkv"] = "qkv_proj",
            ["gate"] = "gate_proj",
            ["up"] = "up_proj",
            ["down"] = "down_proj",
            ["dn"] = "down_proj",
            ["w1"] = "gate_proj",
            ["w2"] = "down_proj",
            ["w3"] = "up_proj",
        },
    };

    /// <summary>GPT-2 (HF Conv1D modules: c_attn is the fused qkv).</summary>
    public static ModelFamily Gpt2 { get; } = new()
    {
        Name = "gpt2",
        Projections = new Dictionary<string, ModuleRole>(StringComparer.Ordinal)
        {
            ["c_attn"] = ModuleRole.Attention,
            ["c_fc"] = ModuleRole.Mlp,
        },
        AttentionContainer = "attn",
        LayerPrefixFormat = "transformer.h.{0}",
    };

    /// <summary>BERT-style encoders and other families with query/key/value/dense and fc1/fc2 modules.</summary>
    public static ModelFamily Encoder { get; } = new()
    {
        Name = "encoder",
        Projections = new Dictionary<string, ModuleRole>(StringComparer.Ordinal)
        {
            ["query"] = ModuleRole.Attention,
            ["key"] = ModuleRole.Attention,
            ["value"] = ModuleRole.Attention,
            ["out_proj"] = ModuleRole.Attention,
            ["Wqkv"] = ModuleRole.Attention,
            ["dense"] = ModuleRole.Unknown,
            ["fc1"] = ModuleRole.Mlp,
            ["fc2"] = ModuleRole.Mlp,
            ["c_proj"] = ModuleRole.Unknown,
            ["in_proj"] = ModuleRole.Unknown,
            ["dense_h_to_4h"] = ModuleRole.Mlp,
            ["dense_4h_to_h"] = ModuleRole.Mlp,
            ["query_key_value"] = ModuleRole.Attention,
        },
        LayerPrefixFormat = "encoder.layer.{0}",
    };

    /// <summary>Every family, in lookup order.</summary>
    public static IReadOnlyList<ModelFamily> All { get; } = [T5, Llama, Gpt2, Encoder];

    /// <summary>Names of output heads: excluded from all-linear (PEFT excludes the output embedding layer).</summary>
    public static IReadOnlySet<string> OutputHeads { get; } = new HashSet<string>(StringComparer.Ordinal)
    {
        "lm_head", "embed_out", "output", "logits", "classifier", "score", "cls", "head",
    };
}
