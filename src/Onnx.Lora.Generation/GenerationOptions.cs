namespace Onnx.Lora.Generation;

/// <summary>
/// How the next token is picked from the logits: greedy (arg-max) when <see cref="Temperature"/> is 0, otherwise a
/// draw from softmax(logits / temperature) restricted to the <see cref="TopK"/> most likely tokens and then to the
/// smallest set of them whose probability reaches <see cref="TopP"/> (the nucleus).
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>Softmax temperature; 0 (default) means greedy decoding.</summary>
    public float Temperature { get; init; }

    /// <summary>Keep only the K most likely tokens; 0 (default) keeps all. 1 is greedy.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches P (0 &lt; P ≤ 1; 1, the default, keeps all).</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Seed of the sampler's random numbers: the same seed gives the same tokens.</summary>
    public int Seed { get; init; }

    /// <summary>True when the arg-max is taken (temperature 0 or top-k 1).</summary>
    public bool IsGreedy => Temperature == 0f || TopK == 1;

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Temperature negative or not finite, top-k negative, top-p outside (0, 1].</exception>
    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0f)
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a finite number ≥ 0 (0 = greedy).");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(TopK);
        if (!(TopP > 0f && TopP <= 1f))
        {
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "Top-p must be in (0, 1].");
        }
    }
}

/// <summary>Settings of one generation.</summary>
public sealed record GenerationOptions
{
    /// <summary>New tokens at most (generation also stops at EOS).</summary>
    public int MaxNewTokens { get; init; } = 64;

    /// <summary>How tokens are picked.</summary>
    public SamplingOptions Sampling { get; init; } = new();

    /// <summary>
    /// True (default): feed each step's present keys/values back as the next step's past, when the model has a KV cache.
    /// False: re-run the whole sequence (with an empty past) for every token.
    /// </summary>
    public bool UseKvCache { get; init; } = true;

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegative(MaxNewTokens);
        ArgumentNullException.ThrowIfNull(Sampling);
        Sampling.Validate();
    }
}

/// <summary>What one generation produced and how long it took.</summary>
/// <param name="PromptTokens">The prompt's ids as fed (with BOS when the tokenizer has one).</param>
/// <param name="NewTokens">The generated ids (EOS not included).</param>
/// <param name="Continuation">The generated text (the decoded sequence past the decoded prompt).</param>
/// <param name="EndedAtEos">True when generation stopped at EOS rather than at the token limit.</param>
/// <param name="UsedKvCache">True when decoding fed present back as past; false when every step re-ran the sequence.</param>
/// <param name="PrefillTime">Time of the first model run (the whole prompt), sampling included.</param>
/// <param name="DecodeSteps">Model runs after the first one.</param>
/// <param name="DecodeTime">Time of those runs, sampling included (streaming callbacks excluded).</param>
public sealed record GenerationResult(
    IReadOnlyList<int> PromptTokens,
    IReadOnlyList<int> NewTokens,
    string Continuation,
    bool EndedAtEos,
    bool UsedKvCache,
    TimeSpan PrefillTime,
    int DecodeSteps,
    TimeSpan DecodeTime)
{
    /// <summary>True when generation stopped because the model's context (<see cref="TextGenerator.MaxPositions"/>) was full.</summary>
    public bool EndedAtContextLimit { get; init; }

    /// <summary>Decode steps per second (0 when there were none).</summary>
    public double DecodeTokensPerSecond => DecodeSteps == 0 || DecodeTime <= TimeSpan.Zero ? 0 : DecodeSteps / DecodeTime.TotalSeconds;
}

/// <summary>Called once per model run with the token picked and the logits (of the last position) it was picked from.</summary>
/// <param name="token">The picked token (EOS included).</param>
/// <param name="logits">The last position's logits; valid only during the call.</param>
public delegate void GenerationStepHandler(int token, ReadOnlySpan<float> logits);
