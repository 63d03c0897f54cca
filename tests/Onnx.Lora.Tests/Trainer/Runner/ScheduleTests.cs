using Onnx.Lora.Trainer.Schedules;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>
/// Schedules against values computed in the test from the Hugging Face formulas (transformers
/// optimization.py: _get_linear/_get_cosine/_get_constant_schedule_with_warmup_lr_lambda), evaluated here in
/// decimal where possible, with a tolerance of 1e-15 relative.
/// </summary>
[TestClass]
public sealed class ScheduleTests
{
    private const double Lr = 3e-4;

    private static double HfWarmup(int step, int warmup) => (double)step / Math.Max(1, warmup);

    private static double HfLinear(int step, int warmup, int total) =>
        step < warmup ? HfWarmup(step, warmup) : Math.Max(0.0, (double)(total - step) / Math.Max(1, total - warmup));

    private static double HfCosine(int step, int warmup, int total)
    {
        if (step < warmup)
        {
            return HfWarmup(step, warmup);
        }

        double progress = (double)(step - warmup) / Math.Max(1, total - warmup);
        return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
    }

    [TestMethod]
    [DataRow(0, 100)]
    [DataRow(10, 100)]
    [DataRow(7, 13)]
    [DataRow(1, 1)]
    public void LearningRate_AllKinds_MatchHfFormulasAtEveryStep(int warmup, int total)
    {
        var linear = new LearningRateSchedule(ScheduleKind.Linear, Lr, warmup, total);
        var cosine = new LearningRateSchedule(ScheduleKind.Cosine, Lr, warmup, total);
        var constant = new LearningRateSchedule(ScheduleKind.Constant, Lr, warmup, total);
        for (int step = 0; step <= total; step++)
        {
            Assert.AreEqual(Lr * HfLinear(step, warmup, total), linear.LearningRate(step), 1e-15 * Lr, $"linear step {step}");
            Assert.AreEqual(Lr * HfCosine(step, warmup, total), cosine.LearningRate(step), 1e-15 * Lr, $"cosine step {step}");
            Assert.AreEqual(Lr * (step < warmup ? HfWarmup(step, warmup) : 1.0), constant.LearningRate(step), 1e-15 * Lr, $"constant step {step}");
        }
    }

    [TestMethod]
    public void LearningRate_KnownPoints_HaveTheirTextbookValues()
    {
        var cosine = new LearningRateSchedule(ScheduleKind.Cosine, 1.0, 10, 110);
        Assert.AreEqual(0.0, cosine.LearningRate(0), "HF's first step with warmup uses lr 0");
        Assert.AreEqual(0.5, cosine.LearningRate(5), 1e-15);
        Assert.AreEqual(1.0, cosine.LearningRate(10), 1e-15);
        Assert.AreEqual(0.5, cosine.LearningRate(60), 1e-15, "half-way through decay cos(π/2) = 0 → 0.5");
        Assert.AreEqual(0.0, cosine.LearningRate(110), 1e-15);
        var linear = new LearningRateSchedule(ScheduleKind.Linear, 1.0, 10, 110);
        Assert.AreEqual(0.75, linear.LearningRate(35), 1e-15);
        Assert.AreEqual(0.0, linear.LearningRate(200), "clamped at 0 past the end");
    }

    [TestMethod]
    [DataRow(0, 0.1, 95, 10)]
    [DataRow(0, 0.03, 1000, 30)]
    [DataRow(0, 0.0, 50, 0)]
    [DataRow(7, 0.0, 50, 7)]
    public void ResolveWarmupSteps_MatchesHfGetWarmupSteps(int steps, double ratio, int total, int expected) =>
        Assert.AreEqual(expected, LearningRateSchedule.ResolveWarmupSteps(steps, ratio, total));
}
