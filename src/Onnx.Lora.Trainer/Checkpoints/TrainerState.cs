using System.Text.Json.Serialization;
using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>
/// Everything besides tensors that a resumed run needs to continue exactly as the uninterrupted run would:
/// stored as <c>onnx_lora_state.json</c> in each checkpoint (beside HF's <c>trainer_state.json</c>). Doubles round-trip
/// exactly through System.Text.Json.
/// </summary>
public sealed record TrainerState
{
    /// <summary>Format version of this file.</summary>
    public int Version { get; init; } = 1;

    /// <summary>Optimizer steps completed.</summary>
    public required int GlobalStep { get; init; }

    /// <summary>Next row the data loader hands out.</summary>
    public required DataPosition DataPosition { get; init; }

    /// <summary>State words of the run's <see cref="DeterministicRandom"/> (dropout masks etc.).</summary>
    public required ulong[] RngState { get; init; }

    /// <summary>Schedule curve name (constant, linear, cosine).</summary>
    public required string ScheduleKind { get; init; }

    /// <summary>Peak learning rate of the schedule.</summary>
    public required double PeakLearningRate { get; init; }

    /// <summary>Warmup steps of the schedule.</summary>
    public required int WarmupSteps { get; init; }

    /// <summary>Total steps of the schedule.</summary>
    public required int TotalSteps { get; init; }

    /// <summary>Learning rate used by the last completed step.</summary>
    public double LastLearningRate { get; init; }

    /// <summary>AdamW bias-correction step count (steps actually applied; skipped non-finite steps do not count).</summary>
    public int OptimizerStep { get; init; }

    /// <summary>Tokens (with a loss target) seen so far.</summary>
    public long TokensSeen { get; init; }

    /// <summary>Best eval loss so far, null before the first evaluation.</summary>
    public double? BestEvalLoss { get; init; }

    /// <summary>Evaluations since <see cref="BestEvalLoss"/> improved (for early stopping).</summary>
    public int EvaluationsWithoutImprovement { get; init; }

    /// <summary>
    /// A fingerprint of the options that must not change across a resume (data, seq length, batch, seed...), so a
    /// resume with different settings is refused instead of silently diverging.
    /// </summary>
    public string? OptionsFingerprint { get; init; }

    /// <summary>Free-form extras the runner wants to carry (kept verbatim).</summary>
    [JsonPropertyName("extra")]
    public IReadOnlyDictionary<string, string>? Extra { get; init; }
}

/// <summary>AdamW moments per trainable tensor (same names and shapes as the parameters).</summary>
/// <param name="FirstMoments">exp_avg per parameter.</param>
/// <param name="SecondMoments">exp_avg_sq per parameter.</param>
public sealed record OptimizerMoments(IReadOnlyList<NamedTensor> FirstMoments, IReadOnlyList<NamedTensor> SecondMoments);

/// <summary>One checkpoint: trainable parameters (training layout and names), optimizer moments and state.</summary>
/// <param name="Parameters">Trainable tensors exactly as the training graph holds them.</param>
/// <param name="Moments">AdamW moments.</param>
/// <param name="State">Step, schedule, RNG and data position.</param>
/// <param name="Run">What HF's trainer_state.json adds (epoch, batch size, log history); null writes its defaults.</param>
public sealed record TrainingCheckpoint(IReadOnlyList<NamedTensor> Parameters, OptimizerMoments Moments, TrainerState State, HfRunInfo? Run = null);
