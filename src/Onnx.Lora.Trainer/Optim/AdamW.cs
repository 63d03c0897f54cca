using System.Numerics.Tensors;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Optim;

/// <summary>
/// AdamW in vectorized C#: per parameter, m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²;
/// θ ← θ(1 − lr·λ) − lr/(1 − β₁ᵗ) · m / (√v/√(1 − β₂ᵗ) + ε). Moments and one scratch buffer are allocated once.
/// </summary>
public sealed class AdamW : IParameterOptimizer
{
    private readonly AdamWOptions _options;
    private readonly IReadOnlyList<ParameterBuffer> _parameters;
    private readonly float[][] _m;
    private readonly float[][] _v;
    private readonly float[] _scratch;

    /// <summary>Creates the optimizer over <paramref name="parameters"/>.</summary>
    public AdamW(IReadOnlyList<ParameterBuffer> parameters, AdamWOptions options)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(options);
        _parameters = parameters;
        _options = options;
        _m = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _v = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _scratch = new float[parameters.Count == 0 ? 0 : parameters.Max(p => p.Values.Length)];
        foreach (ParameterBuffer p in parameters)
        {
            if (p.Values.Length != p.Gradients.Length)
            {
                throw new LoraException($"Parameter '{p.Name}' has {p.Values.Length} values but {p.Gradients.Length} gradients.");
            }
        }
    }

    /// <inheritdoc />
    public long StepCount { get; private set; }

    /// <summary>First moments (read-only view), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> FirstMoment(int index) => _m[index];

    /// <summary>Second moments (read-only view), for checkpoints and tests.</summary>
    public ReadOnlySpan<float> SecondMoment(int index) => _v[index];

    /// <inheritdoc />
    public void RestoreState(long stepCount, IReadOnlyList<float[]> firstMoments, IReadOnlyList<float[]> secondMoments)
    {
        OptimizerState.Restore(_parameters, _m, _v, stepCount, firstMoments, secondMoments);
        StepCount = stepCount;
    }

    /// <inheritdoc />
    public void Step(float learningRate)
    {
        StepCount++;
        AdamWStepScalars s = AdamWStepScalars.For(_options, StepCount, learningRate);
        for (int i = 0; i < _parameters.Count; i++)
        {
            // LoRA+: a tensor with its own rate multiplier gets its own scalars (same formula, scaled lr).
            float scale = _parameters[i].LearningRateScale;
            AdamWStepScalars si = scale == 1f ? s : AdamWStepScalars.For(_options, StepCount, learningRate * scale);
            Update(_parameters[i].Values, _parameters[i].Gradients, _m[i], _v[i], _scratch.AsSpan(0, _parameters[i].Values.Length), _options, si);
        }
    }

    /// <summary>One AdamW update of one tensor, all spans of equal length.</summary>
    internal static void Update(Span<float> theta, ReadOnlySpan<float> g, Span<float> m, Span<float> v, Span<float> scratch, AdamWOptions o, AdamWStepScalars s)
    {
        // m = β₁m + (1-β₁)g
        TensorPrimitives.Multiply(m, o.Beta1, m);
        TensorPrimitives.MultiplyAdd(g, 1 - o.Beta1, m, m);

        // v = β₂v + (1-β₂)g²
        TensorPrimitives.Multiply(g, g, scratch);
        TensorPrimitives.Multiply(v, o.Beta2, v);
        TensorPrimitives.MultiplyAdd(scratch, 1 - o.Beta2, v, v);

        // scratch = m / (√v·c₂ + ε)
        TensorPrimitives.Sqrt(v, scratch);
        TensorPrimitives.Multiply(scratch, s.InvSqrtBias2, scratch);
        TensorPrimitives.Add(scratch, s.Epsilon, scratch);
        TensorPrimitives.Divide(m, scratch, scratch);

        // θ = θ·(1 - lr·λ) - stepSize·scratch
        TensorPrimitives.Multiply(theta, s.Decay, theta);
        TensorPrimitives.MultiplyAdd(scratch, -s.StepSize, theta, theta);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        // Managed buffers only; nothing native to release.
    }
}
