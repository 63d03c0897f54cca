using Onnx.Lora.Trainer.Optim;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Runner;

/// <summary>What resume and LoRA+ need from the C# AdamW: state round-trips and per-tensor learning rates.</summary>
[TestClass]
public sealed class OptimizerStateTests
{
    private static (ParameterBuffer[] Buffers, AdamW Optimizer) Create(int seed, float scaleOfSecond = 1f)
    {
        var rng = new Random(seed);
        var buffers = new[]
        {
            new ParameterBuffer("a", TestArrays.Uniform(37, rng), new float[37]),
            new ParameterBuffer("b", TestArrays.Uniform(37, rng), new float[37], scaleOfSecond),
        };
        return (buffers, new AdamW(buffers, new AdamWOptions { WeightDecay = 0.01f }));
    }

    private static void SetGradients(ParameterBuffer[] buffers, int step)
    {
        var rng = new Random(1000 + step);
        foreach (ParameterBuffer p in buffers)
        {
            for (int i = 0; i < p.Gradients.Length; i++)
            {
                p.Gradients[i] = (float)(rng.NextDouble() * 2 - 1);
            }
        }
    }

    [TestMethod]
    public void RestoreState_FromAnotherOptimizerAfterTwoSteps_ThirdStepIsBitIdentical()
    {
        (ParameterBuffer[] original, AdamW first) = Create(3);
        (ParameterBuffer[] copy, AdamW second) = Create(99);
        for (int step = 0; step < 2; step++)
        {
            SetGradients(original, step);
            first.Step(1e-2f);
        }

        for (int i = 0; i < copy.Length; i++)
        {
            original[i].Values.CopyTo(copy[i].Values, 0);
        }

        second.RestoreState(first.StepCount, [first.FirstMoment(0).ToArray(), first.FirstMoment(1).ToArray()], [first.SecondMoment(0).ToArray(), first.SecondMoment(1).ToArray()]);
        SetGradients(original, 2);
        SetGradients(copy, 2);
        first.Step(1e-2f);
        second.Step(1e-2f);

        Assert.AreEqual(3, second.StepCount);
        for (int i = 0; i < copy.Length; i++)
        {
            CollectionAssert.AreEqual(original[i].Values, copy[i].Values, $"parameter {original[i].Name}");
        }
    }

    [TestMethod]
    public void Step_WithLearningRateScale_FirstUpdateIsScaledSignStep()
    {
        const float Lr = 1e-3f, Ratio = 16f;
        (ParameterBuffer[] buffers, AdamW optimizer) = Create(5, Ratio);
        float[][] before = buffers.Select(b => (float[])b.Values.Clone()).ToArray();
        SetGradients(buffers, 0);
        optimizer.Step(Lr);

        // Step 1 of AdamW, computed independently: m̂ = g, v̂ = g², so θ' = θ(1 − lr·λ) − lr·g/(|g| + ε).
        for (int p = 0; p < buffers.Length; p++)
        {
            double lr = Lr * (p == 1 ? Ratio : 1);
            for (int i = 0; i < before[p].Length; i++)
            {
                double g = buffers[p].Gradients[i];
                double expected = (before[p][i] * (1 - (lr * 0.01))) - (lr * g / (Math.Abs(g) + 1e-8));
                Assert.AreEqual(expected, buffers[p].Values[i], 1e-6, $"{buffers[p].Name}[{i}]");
            }
        }
    }
}
