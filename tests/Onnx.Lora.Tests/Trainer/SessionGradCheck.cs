using Onnx.Lora.Trainer;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>Central differences of a <see cref="LoraTrainingSession"/>'s evaluation loss for one parameter entry.</summary>
internal static class SessionGradCheck
{
    /// <summary>(L(θ + h) − L(θ − h)) / 2h for entry <paramref name="index"/> of <paramref name="name"/>; the parameter is restored.</summary>
    public static double CentralDifference(LoraTrainingSession session, TrainingBatch batch, string name, int index, double step)
    {
        float[] values = session.GetParameter(name).ToArray();
        float original = values[index];
        values[index] = (float)(original + step);
        session.SetParameter(name, values);
        double plus = session.Evaluate(batch).Loss;
        values[index] = (float)(original - step);
        session.SetParameter(name, values);
        double minus = session.Evaluate(batch).Loss;
        values[index] = original;
        session.SetParameter(name, values);
        return (plus - minus) / (2 * step);
    }

    /// <summary>|a − n| / max(floor, |a|, |n|): relative error that stays meaningful near zero.</summary>
    public static double RelativeError(double analytic, double numeric, double floor) =>
        Math.Abs(analytic - numeric) / Math.Max(floor, Math.Max(Math.Abs(analytic), Math.Abs(numeric)));
}
