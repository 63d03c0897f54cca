namespace Onnx.Lora.Trainer;

/// <summary>The data-parallel optimizer step of <see cref="LoraTrainingSession"/>.</summary>
/// <remarks>
/// Each rank computes, over its micro-batches, Σ_k t_k·g_k (t_k counted target tokens, g_k the mean-loss gradient of
/// micro-batch k, exactly what one process accumulates), Σ_k t_k·loss_k and Σ_k t_k. One all-reduce adds these over
/// all ranks in a single buffer; every rank then divides by the global token count, so the gradient is the mean over
/// all target tokens of the global batch, the same one process with that batch computes. Sums are kept in double:
/// the result differs from one process only by the float rounding of each g_k. Clipping and AdamW then run
/// identically on every rank, so the ranks' parameters stay equal without ever being sent.
/// </remarks>
public sealed partial class LoraTrainingSession
{
    private double[] _reduceBuffer = [];

    /// <summary>
    /// One optimizer step over micro-batches, like <see cref="Step(IReadOnlyList{TrainingBatch})"/>; with a
    /// <see cref="TrainingSessionOptions.Communicator"/> the gradients, the loss and <paramref name="stepSums"/> are
    /// summed over all ranks with one all-reduce, and the step uses the global token-weighted mean gradient.
    /// </summary>
    /// <param name="microBatches">This rank's micro-batches of the step.</param>
    /// <param name="stepSums">The caller's per-step counters (e.g. tokens); replaced by their sums over all ranks (unchanged in one process).</param>
    /// <returns>Loss and token count over the global batch.</returns>
    public TrainStepResult Step(IReadOnlyList<TrainingBatch> microBatches, Span<double> stepSums)
    {
        ArgumentNullException.ThrowIfNull(microBatches);
        if (_options.Communicator is not { Size: > 1 } communicator)
        {
            return Step(microBatches);
        }

        int gradientLength = 0;
        foreach (float[] g in _gradients)
        {
            gradientLength += g.Length;
        }

        int length = gradientLength + 2 + stepSums.Length;
        if (_reduceBuffer.Length != length)
        {
            _reduceBuffer = new double[length]; // Once per run (stepSums has a fixed length).
        }

        Span<double> buffer = _reduceBuffer;
        buffer.Clear();
        double lossSum = 0;
        double tokenSum = 0;
        for (int k = 0; k < microBatches.Count; k++)
        {
            RunTraining(microBatches[k]);
            double tokens = _tokens[0];
            if (tokens == 0)
            {
                // A rank's share of an epoch's last global batch can be empty: its 0/0 loss carries nothing.
                continue;
            }

            lossSum += _loss[0] * tokens;
            tokenSum += tokens;
            int offset = 0;
            foreach (float[] g in _gradients)
            {
                Span<double> sums = buffer.Slice(offset, g.Length);
                for (int j = 0; j < g.Length; j++)
                {
                    sums[j] += tokens * g[j];
                }

                offset += g.Length;
            }
        }

        buffer[gradientLength] = lossSum;
        buffer[gradientLength + 1] = tokenSum;
        stepSums.CopyTo(buffer[(gradientLength + 2)..]);
        communicator.AllReduceSum(buffer);
        lossSum = buffer[gradientLength];
        tokenSum = buffer[gradientLength + 1];
        buffer[(gradientLength + 2)..].CopyTo(stepSums);

        double inverse = tokenSum > 0 ? 1 / tokenSum : 0;
        int start = 0;
        foreach (float[] g in _gradients)
        {
            ReadOnlySpan<double> sums = buffer.Slice(start, g.Length);
            for (int j = 0; j < g.Length; j++)
            {
                g[j] = (float)(sums[j] * inverse);
            }

            start += g.Length;
        }

        return ClipAndApply(tokenSum > 0 ? (float)(lossSum / tokenSum) : 0f, tokenSum);
    }
}
