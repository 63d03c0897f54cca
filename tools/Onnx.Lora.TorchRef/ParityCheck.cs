namespace Onnx.Lora.TorchRef;

/// <summary>How far one tensor of the candidate is from the reference: ‖Δ‖∞/‖ref‖∞ and ‖Δ‖₂/‖ref‖₂.</summary>
internal sealed record TensorDiff(string Name, double MaxAbsDiff, double MaxAbsRef, double RelInf, double RelL2)
{
    public static TensorDiff Of(string name, float[] reference, float[] candidate)
    {
        if (reference.Length != candidate.Length)
        {
            throw new ArgumentException($"Tensor '{name}': {candidate.Length} values vs the reference's {reference.Length}.");
        }

        double maxDiff = 0, maxRef = 0, d2 = 0, r2 = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            double d = (double)candidate[i] - reference[i];
            maxDiff = Math.Max(maxDiff, Math.Abs(d));
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            d2 += d * d;
            r2 += (double)reference[i] * reference[i];
        }

        return new TensorDiff(name, maxDiff, maxRef, maxRef == 0 ? maxDiff : maxDiff / maxRef, r2 == 0 ? Math.Sqrt(d2) : Math.Sqrt(d2 / r2));
    }
}

/// <summary>Loss and gradients on one batch, then an N-step AdamW loss trajectory, of a candidate against a reference.</summary>
internal sealed record ParityResult(float ReferenceLoss, float CandidateLoss, IReadOnlyList<TensorDiff> Gradients, float[] ReferenceTrajectory, float[] CandidateTrajectory)
{
    public double LossRel => Math.Abs(CandidateLoss - ReferenceLoss) / Math.Abs(ReferenceLoss);

    public double WorstGradientRel => Gradients.Max(g => g.RelInf);

    public double WorstTrajectoryRel => ReferenceTrajectory.Zip(CandidateTrajectory, (r, c) => Math.Abs(c - r) / Math.Abs(r)).DefaultIfEmpty(0).Max();

    public static ParityResult Run(ITrainingPeer reference, ITrainingPeer candidate, IReadOnlyList<TokenBatch> batches, int steps)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(candidate);
        (float refLoss, Dictionary<string, float[]> refGrads) = reference.LossAndGradients(batches[0]);
        (float candLoss, Dictionary<string, float[]> candGrads) = candidate.LossAndGradients(batches[0]);
        var missing = refGrads.Keys.Except(candGrads.Keys).Concat(candGrads.Keys.Except(refGrads.Keys)).ToList();
        if (missing.Count > 0)
        {
            throw new ArgumentException($"The peers train different tensors: {string.Join(", ", missing.Take(5))}{(missing.Count > 5 ? ", ..." : string.Empty)}.");
        }

        var grads = refGrads.Keys.Order(StringComparer.Ordinal).Select(n => TensorDiff.Of(n, refGrads[n], candGrads[n])).ToList();
        var refTraj = new float[steps];
        var candTraj = new float[steps];
        for (int i = 0; i < steps; i++)
        {
            TokenBatch batch = batches[i % batches.Count];
            refTraj[i] = reference.Step(batch);
            candTraj[i] = candidate.Step(batch);
        }

        return new ParityResult(refLoss, candLoss, grads, refTraj, candTraj);
    }
}
