namespace Onnx.Lora.Trainer.Schedules;

/// <summary>Shape of the learning-rate curve after warmup.</summary>
public enum ScheduleKind
{
    /// <summary>Flat at the peak rate (HF <c>get_constant_schedule_with_warmup</c>).</summary>
    Constant,

    /// <summary>Linear decay to 0 at the last step (HF <c>get_linear_schedule_with_warmup</c>).</summary>
    Linear,

    /// <summary>Half-cosine decay to 0 at the last step (HF <c>get_cosine_schedule_with_warmup</c>, num_cycles 0.5).</summary>
    Cosine,
}

/// <summary>
/// Learning rate per optimizer step, with the same formulas as Hugging Face transformers' LambdaLR schedules:
/// warmup: lr·s/max(1,W) for s &lt; W; then constant: lr; linear: lr·max(0,(T−s)/max(1,T−W));
/// cosine: lr·max(0, ½(1+cos(π·(s−W)/max(1,T−W)))). The step s is zero-based, so with warmup the very first
/// update uses lr 0, exactly as HF does.
/// </summary>
/// <remarks>The schedule is a pure function of the step, so its whole state for a checkpoint is the step.</remarks>
public sealed record LearningRateSchedule
{
    /// <summary>Creates a schedule.</summary>
    /// <param name="kind">Curve after warmup.</param>
    /// <param name="peakLearningRate">The rate reached at the end of warmup.</param>
    /// <param name="warmupSteps">Number of warmup steps W (≥ 0).</param>
    /// <param name="totalSteps">Total optimizer steps T (&gt; 0).</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative warmup, non-positive total or non-finite rate.</exception>
    public LearningRateSchedule(ScheduleKind kind, double peakLearningRate, int warmupSteps, int totalSteps)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(warmupSteps);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalSteps);
        if (!double.IsFinite(peakLearningRate) || peakLearningRate < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(peakLearningRate), peakLearningRate, "The learning rate must be finite and ≥ 0.");
        }

        Kind = kind;
        PeakLearningRate = peakLearningRate;
        WarmupSteps = warmupSteps;
        TotalSteps = totalSteps;
    }

    /// <summary>Curve after warmup.</summary>
    public ScheduleKind Kind { get; }

    /// <summary>Peak learning rate.</summary>
    public double PeakLearningRate { get; }

    /// <summary>Warmup steps W.</summary>
    public int WarmupSteps { get; }

    /// <summary>Total optimizer steps T.</summary>
    public int TotalSteps { get; }

    /// <summary>
    /// Warmup steps as HF's <c>TrainingArguments.get_warmup_steps</c> computes them: the explicit count when it is
    /// positive, else ⌈T·ratio⌉.
    /// </summary>
    public static int ResolveWarmupSteps(int warmupSteps, double warmupRatio, int totalSteps) =>
        warmupSteps > 0 ? warmupSteps : (int)Math.Ceiling(totalSteps * warmupRatio);

    /// <summary>The multiplier of the peak rate at zero-based optimizer step <paramref name="step"/>.</summary>
    public double Factor(int step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        if (step < WarmupSteps)
        {
            return (double)step / Math.Max(1, WarmupSteps);
        }

        double progressDenominator = Math.Max(1, TotalSteps - WarmupSteps);
        return Kind switch
        {
            ScheduleKind.Constant => 1.0,
            ScheduleKind.Linear => Math.Max(0.0, (TotalSteps - step) / progressDenominator),
            ScheduleKind.Cosine => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * ((step - WarmupSteps) / progressDenominator)))),
            _ => throw new InvalidOperationException($"Unknown schedule {Kind}."),
        };
    }

    /// <summary>The learning rate at zero-based optimizer step <paramref name="step"/>.</summary>
    public double LearningRate(int step) => PeakLearningRate * Factor(step);
}
