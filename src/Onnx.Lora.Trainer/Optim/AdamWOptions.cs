using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Optim;

/// <summary>AdamW hyper-parameters (decoupled weight decay, as torch.optim.AdamW). Validated on creation.</summary>
public sealed record AdamWOptions
{
    private readonly float _beta1 = 0.9f;
    private readonly float _beta2 = 0.999f;
    private readonly float _epsilon = 1e-8f;
    private readonly float _weightDecay = 0.01f;

    /// <summary>First-moment decay, in [0, 1).</summary>
    public float Beta1 { get => _beta1; init => _beta1 = value is >= 0 and < 1 ? value : throw new LoraException($"AdamW beta1 must be in [0, 1); got {value}."); }

    /// <summary>Second-moment decay, in [0, 1).</summary>
    public float Beta2 { get => _beta2; init => _beta2 = value is >= 0 and < 1 ? value : throw new LoraException($"AdamW beta2 must be in [0, 1); got {value}."); }

    /// <summary>Denominator epsilon, &gt; 0.</summary>
    public float Epsilon { get => _epsilon; init => _epsilon = value > 0 ? value : throw new LoraException($"AdamW epsilon must be > 0; got {value}."); }

    /// <summary>Decoupled weight decay, ≥ 0.</summary>
    public float WeightDecay { get => _weightDecay; init => _weightDecay = value >= 0 ? value : throw new LoraException($"AdamW weight decay must be >= 0; got {value}."); }
}

/// <summary>Which implementation runs the AdamW update.</summary>
public enum OptimizerImplementation
{
    /// <summary>Vectorized C# with System.Numerics.Tensors (the default: faster in BENCHMARKS.md).</summary>
    Vectorized,

    /// <summary>An ONNX model run by ONNX Runtime (on the session's execution provider).</summary>
    Onnx,
}

/// <summary>One trainable tensor's buffers: values updated in place from gradients.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="Values">Parameter values (updated in place).</param>
/// <param name="Gradients">Gradients of the step.</param>
/// <param name="LearningRateScale">Multiplier of the step's learning rate for this tensor (LoRA+ trains B with λ·lr); 1 = plain.</param>
public sealed record ParameterBuffer(string Name, float[] Values, float[] Gradients, float LearningRateScale = 1f);

/// <summary>An optimizer over a fixed set of parameter buffers.</summary>
public interface IParameterOptimizer : IDisposable
{
    /// <summary>Optimizer steps taken so far.</summary>
    long StepCount { get; }

    /// <summary>Applies one update with learning rate <paramref name="learningRate"/> to every parameter.</summary>
    void Step(float learningRate);

    /// <summary>First moments (exp_avg) of parameter <paramref name="index"/>, for checkpoints.</summary>
    ReadOnlySpan<float> FirstMoment(int index);

    /// <summary>Second moments (exp_avg_sq) of parameter <paramref name="index"/>, for checkpoints.</summary>
    ReadOnlySpan<float> SecondMoment(int index);

    /// <summary>
    /// Restores the state saved from <see cref="FirstMoment"/>, <see cref="SecondMoment"/> and <see cref="StepCount"/>,
    /// so the next <see cref="Step"/> is bit-identical to the one the saved optimizer would have taken.
    /// </summary>
    /// <exception cref="LoraException">The counts or lengths differ from this optimizer's parameters.</exception>
    void RestoreState(long stepCount, IReadOnlyList<float[]> firstMoments, IReadOnlyList<float[]> secondMoments);
}

/// <summary>Shared checks of <see cref="IParameterOptimizer.RestoreState"/>.</summary>
internal static class OptimizerState
{
    public static void Restore(IReadOnlyList<ParameterBuffer> parameters, float[][] m, float[][] v, long stepCount, IReadOnlyList<float[]> first, IReadOnlyList<float[]> second)
    {
        ArgumentNullException.ThrowIfNull(first);
        ArgumentNullException.ThrowIfNull(second);
        ArgumentOutOfRangeException.ThrowIfNegative(stepCount);
        if (first.Count != parameters.Count || second.Count != parameters.Count)
        {
            throw new LoraException($"Optimizer state has {first.Count}/{second.Count} moment tensors; the optimizer has {parameters.Count} parameters.");
        }

        for (int i = 0; i < parameters.Count; i++)
        {
            if (first[i].Length != m[i].Length || second[i].Length != v[i].Length)
            {
                throw new LoraException($"Optimizer moments of '{parameters[i].Name}' have {first[i].Length}/{second[i].Length} values; the parameter has {m[i].Length}.");
            }
        }

        for (int i = 0; i < parameters.Count; i++)
        {
            first[i].CopyTo(m[i], 0);
            second[i].CopyTo(v[i], 0);
        }
    }
}

/// <summary>The scalars of AdamW step t shared by both implementations.</summary>
internal readonly record struct AdamWStepScalars(float Decay, float StepSize, float InvSqrtBias2, float Epsilon)
{
    /// <summary>
    /// θ ← θ·(1 − lr·λ) − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε): torch's AdamW with bias correction folded into
    /// two scalars.
    /// </summary>
    public static AdamWStepScalars For(AdamWOptions o, long t, float learningRate)
    {
        double bias1 = 1 - Math.Pow(o.Beta1, t);
        double bias2 = 1 - Math.Pow(o.Beta2, t);
        return new AdamWStepScalars((float)(1 - (learningRate * o.WeightDecay)), (float)(learningRate / bias1), (float)(1 / Math.Sqrt(bias2)), o.Epsilon);
    }
}
