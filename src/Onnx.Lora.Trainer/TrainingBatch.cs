namespace Onnx.Lora.Trainer;

/// <summary>
/// One micro-batch in row-major [batch, sequence] layout. Labels default to the input ids with padding (mask 0)
/// set to −100; the attention mask defaults to all ones; position ids are derived from the mask.
/// </summary>
public sealed record TrainingBatch
{
    /// <summary>Token ids, [batch × sequence].</summary>
    public required long[] InputIds { get; init; }

    /// <summary>Rows in the batch.</summary>
    public required int BatchSize { get; init; }

    /// <summary>Tokens per row.</summary>
    public required int SequenceLength { get; init; }

    /// <summary>Attention mask (1 = token, 0 = padding), [batch × sequence]; null for all ones.</summary>
    public long[]? AttentionMask { get; init; }

    /// <summary>Labels: [batch × sequence] for causal LM (−100 = not counted) or [batch] for classification; null to derive from the ids.</summary>
    public long[]? Labels { get; init; }

    /// <summary>Float targets for an MSE head, with their shape.</summary>
    public float[]? Targets { get; init; }

    /// <summary>Shape of <see cref="Targets"/>.</summary>
    public long[]? TargetShape { get; init; }
}

/// <summary>What a training step reports.</summary>
/// <param name="Loss">Mean loss over the counted tokens of all micro-batches.</param>
/// <param name="Tokens">Counted tokens (or samples).</param>
/// <param name="GradientNorm">Global L2 norm of the gradient before clipping.</param>
/// <param name="Clipped">True when the gradient was scaled down to the clipping norm.</param>
public readonly record struct TrainStepResult(float Loss, float Tokens, float GradientNorm, bool Clipped)
{
    /// <summary>True when the loss or the gradient was NaN/Inf: the step was NOT applied (parameters and optimizer unchanged).</summary>
    public bool NonFinite { get; init; }
}

/// <summary>What an evaluation reports.</summary>
/// <param name="Loss">Mean loss over the counted tokens.</param>
/// <param name="Tokens">Counted tokens (or samples).</param>
public readonly record struct EvalResult(float Loss, float Tokens);
