namespace Onnx.Lora.Models.Builders;

/// <summary>How rotary position embeddings pair the dimensions of a head.</summary>
public enum RopeStyle
{
    /// <summary>Rotates interleaved pairs (x[2i], x[2i+1]), as llama2.c, Meta's Llama and GPT-J do.</summary>
    Interleaved,

    /// <summary>Rotates the two halves (x[i], x[i+d/2]), as Hugging Face's rotate_half does.</summary>
    RotateHalf,
}

/// <summary>How linear weight initializers are named.</summary>
public enum InitializerNaming
{
    /// <summary>Anonymous <c>onnx::MatMul_N</c>, as torch.onnx names weights it had to transpose.</summary>
    Anonymous,

    /// <summary>Module names such as <c>model.layers.0.self_attn.q_proj.weight</c>.</summary>
    Named,
}

/// <summary>Sizes and options of a Llama-family decoder. Validated by <see cref="Validate"/>.</summary>
public sealed record LlamaConfig
{
    /// <summary>Number of decoder layers.</summary>
    public int Layers { get; init; } = 2;

    /// <summary>Hidden size (model dimension).</summary>
    public int Hidden { get; init; } = 64;

    /// <summary>Attention (query) heads.</summary>
    public int Heads { get; init; } = 4;

    /// <summary>Key/value heads (GQA when fewer than <see cref="Heads"/>).</summary>
    public int KvHeads { get; init; } = 2;

    /// <summary>MLP intermediate size.</summary>
    public int Intermediate { get; init; } = 128;

    /// <summary>Vocabulary size.</summary>
    public int Vocab { get; init; } = 256;

    /// <summary>Longest sequence (rows of the rotary cache and causal mask).</summary>
    public int MaxPositions { get; init; } = 128;

    /// <summary>RMSNorm epsilon.</summary>
    public float RmsNormEps { get; init; } = 1e-5f;

    /// <summary>Rotary base.</summary>
    public float RopeTheta { get; init; } = 10000f;

    /// <summary>Rotary pairing.</summary>
    public RopeStyle Rope { get; init; } = RopeStyle.RotateHalf;

    /// <summary>True when the classifier reuses the token embedding (torch still exports it as its own transposed initializer).</summary>
    public bool TiedEmbeddings { get; init; } = true;

    /// <summary>How linear weight initializers are named (torch-style builder only).</summary>
    public InitializerNaming Naming { get; init; } = InitializerNaming.Anonymous;

    /// <summary>
    /// True for the decoder-with-past form (<c>position_ids</c>, <c>past_key_values.N.key/value</c> inputs,
    /// <c>present.N.key/value</c> outputs; torch-style builder only). False for the plain form without a cache.
    /// </summary>
    public bool KvCache { get; init; }

    /// <summary>Seed of the random weights when no weight source is given.</summary>
    public int Seed { get; init; } = 20261125;

    /// <summary>Size of one head.</summary>
    public int HeadDim => Hidden / Heads;

    /// <summary>Total key/value width.</summary>
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Number of parameters (embedding, layers, final norm, classifier if untied).</summary>
    public long ParameterCount =>
        ((long)Vocab * Hidden * (TiedEmbeddings ? 1 : 2)) + Hidden +
        ((long)Layers * ((2L * Hidden) + ((long)Hidden * Hidden * 2) + (2L * Hidden * KvDim) + (3L * Hidden * Intermediate)));

    /// <summary>Checks the sizes fit together.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive or the head sizes do not divide.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Hidden);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Heads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(KvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Intermediate);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Vocab);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxPositions);
        if (Hidden % Heads != 0 || HeadDim % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Heads), $"Hidden {Hidden} must split into {Heads} heads of even size.");
        }

        if (Heads % KvHeads != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(KvHeads), $"Heads {Heads} must be a multiple of kv-heads {KvHeads}.");
        }
    }
}
