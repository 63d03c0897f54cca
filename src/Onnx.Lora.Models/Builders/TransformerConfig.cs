namespace Onnx.Lora.Models.Builders;

/// <summary>The sizes every LayerNorm transformer builder shares (GPT-2, BERT); each config adds its own options.</summary>
public abstract record TransformerConfig
{
    /// <summary>Number of layers (blocks).</summary>
    public int Layers { get; init; } = 2;

    /// <summary>Hidden size.</summary>
    public int Hidden { get; init; } = 64;

    /// <summary>Attention heads.</summary>
    public int Heads { get; init; } = 4;

    /// <summary>Intermediate (MLP) size.</summary>
    public abstract int Intermediate { get; init; }

    /// <summary>Vocabulary size.</summary>
    public int Vocab { get; init; } = 256;

    /// <summary>Rows of the learned position embedding (and of a decoder's causal mask).</summary>
    public int MaxPositions { get; init; } = 128;

    /// <summary>LayerNorm epsilon.</summary>
    public abstract float LayerNormEps { get; init; }

    /// <summary>Default-domain opset (≥ 17 for LayerNormalization; 20 or later uses the standard Gelu op, earlier ones decompose it with Erf).</summary>
    public long Opset { get; init; } = 17;

    /// <summary>Seed of the random weights.</summary>
    public int Seed { get; init; } = 20261125;

    /// <summary>Head size.</summary>
    public int HeadDim => Hidden / Heads;

    /// <summary>Checks the sizes.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive, heads do not divide hidden, or opset &lt; 17.</exception>
    public virtual void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Hidden);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Heads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Intermediate);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Vocab);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxPositions);
        ArgumentOutOfRangeException.ThrowIfLessThan(Opset, 17L);
        if (Hidden % Heads != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Heads), $"Hidden {Hidden} must split into {Heads} heads.");
        }
    }
}
