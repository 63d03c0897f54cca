using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Evaluation;

/// <summary>The cross-entropy of one position's logits, as the evaluators score rows.</summary>
internal static class CrossEntropy
{
    /// <summary>log Σ exp(l) − l[target], in double with the max subtracted (logits of fp16 models span tens).</summary>
    /// <exception cref="DataException">The target is outside the logits.</exception>
    public static double Of(ReadOnlySpan<float> logits, long target)
    {
        if ((ulong)target >= (ulong)logits.Length)
        {
            throw new DataException($"Token id {target} is outside the model's {logits.Length} logits.");
        }

        double max = double.NegativeInfinity;
        foreach (float l in logits)
        {
            max = Math.Max(max, l);
        }

        double sum = 0;
        foreach (float l in logits)
        {
            sum += Math.Exp(l - max);
        }

        return max + Math.Log(sum) - logits[(int)target];
    }

    /// <summary>The class with the largest logit (the first of equal ones).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int c = 1; c < logits.Length; c++)
        {
            best = logits[c] > logits[best] ? c : best;
        }

        return best;
    }
}
