using System.Diagnostics;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Checkpoints;

namespace Onnx.Lora.Trainer.Gpu;

/// <summary>What <see cref="FixedBatchRun"/> does: one seeded batch, optionally timed optimizer steps.</summary>
public sealed record FixedBatchRunOptions
{
    /// <summary>Vocabulary size: token ids are drawn uniformly from [0, VocabSize).</summary>
    public required int VocabSize { get; init; }

    /// <summary>Rows per batch.</summary>
    public int BatchSize { get; init; } = 2;

    /// <summary>Tokens per row.</summary>
    public int SequenceLength { get; init; } = 64;

    /// <summary>Seed of the batch and of <see cref="LoraBStd"/>'s values: same seed, same inputs on every provider.</summary>
    public int Seed { get; init; } = 1234;

    /// <summary>
    /// Standard deviation of seeded normal values written into every <c>lora_B</c> tensor before the run (0 = keep the
    /// model's). A fresh adapter has B = 0, which makes every A gradient zero and a parity check on A vacuous.
    /// </summary>
    public float LoraBStd { get; init; } = 0.02f;

    /// <summary>Timed optimizer steps after the gradient run (0 = none).</summary>
    public int Steps { get; init; }

    /// <summary>Untimed optimizer steps before the timed ones (kernel selection, arena growth, TensorRT engines); none when <see cref="Steps"/> is 0.</summary>
    public int WarmupSteps { get; init; } = 2;
}

/// <summary>Loss and gradients of one batch, and the timing of training steps on it.</summary>
/// <param name="Loss">Mean loss of the batch (before any optimizer step).</param>
/// <param name="Tokens">Counted tokens.</param>
/// <param name="Gradients">Gradient of every trainable tensor, named like the tensor.</param>
/// <param name="StepMilliseconds">Wall time of each timed optimizer step (forward, backward, copies, AdamW).</param>
public sealed record FixedBatchResult(float Loss, float Tokens, IReadOnlyList<NamedTensor> Gradients, IReadOnlyList<double> StepMilliseconds)
{
    /// <summary>Median of <see cref="StepMilliseconds"/> (NaN when no step was timed).</summary>
    public double MedianStepMilliseconds => StepMilliseconds.Count == 0 ? double.NaN : StepMilliseconds.Order().ElementAt(StepMilliseconds.Count / 2);
}

/// <summary>
/// Computes the loss and every LoRA gradient of one seeded random batch, then optionally times training steps on
/// it: the same numbers on two execution providers are a parity check (CPU vs CUDA), and the timing is the training
/// throughput of one provider, measured the way a training run spends it.
/// </summary>
public static class FixedBatchRun
{
    /// <summary>Runs <paramref name="options"/> on an open <paramref name="session"/>.</summary>
    public static FixedBatchResult Run(LoraTrainingSession session, FixedBatchRunOptions options)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.VocabSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.BatchSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(options.SequenceLength);
        ArgumentOutOfRangeException.ThrowIfNegative(options.Steps);
        ArgumentOutOfRangeException.ThrowIfNegative(options.WarmupSteps);
        if (options.LoraBStd > 0)
        {
            var random = new Random(options.Seed + 1);
            foreach (TrainableTensor t in session.Parameters.Where(p => p.Name.Contains("lora_B", StringComparison.Ordinal)))
            {
                var values = new float[t.ElementCount];
                for (int i = 0; i < values.Length; i++)
                {
                    values[i] = options.LoraBStd * Normal(random);
                }

                session.SetParameter(t.Name, values);
            }
        }

        TrainingBatch batch = Batch(options, options.Seed);
        EvalResult first = session.ComputeGradients(batch);
        var gradients = session.Parameters.Select(p => new NamedTensor(p.Name, [.. p.Dims], session.GetGradient(p.Name).ToArray())).ToArray();

        TrainingBatch second = Batch(options, options.Seed + 2);
        var times = new List<double>(options.Steps);
        int total = options.Steps == 0 ? 0 : options.WarmupSteps + options.Steps;
        for (int step = 0; step < total; step++)
        {
            long start = Stopwatch.GetTimestamp();
            session.Step(step % 2 == 0 ? batch : second);
            if (step >= options.WarmupSteps)
            {
                times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
        }

        return new FixedBatchResult(first.Loss, first.Tokens, gradients, times);
    }

    /// <summary>The seeded batch: ids uniform in [0, vocab), every position counted.</summary>
    public static TrainingBatch Batch(FixedBatchRunOptions options, int seed)
    {
        ArgumentNullException.ThrowIfNull(options);
        var random = new Random(seed);
        var ids = new long[(long)options.BatchSize * options.SequenceLength];
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = random.Next(options.VocabSize);
        }

        return new TrainingBatch { InputIds = ids, BatchSize = options.BatchSize, SequenceLength = options.SequenceLength };
    }

    private static float Normal(Random random)
    {
        // Box-Muller: seeded and identical on every platform, unlike a library's normal sampler.
        double u = 1.0 - random.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u)) * Math.Cos(2 * Math.PI * random.NextDouble()));
    }
}
