using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Metrics;

namespace Onnx.Lora.Tests.Trainer.Runner;

[TestClass]
public sealed class LossPlotTests
{
    [TestMethod]
    public void Track_TrainRecords_CollectTheLearningRateCurve()
    {
        using var temp = new TempDir();
        using (MetricsLog log = MetricsLog.Open(temp.File("metrics.jsonl")))
        {
            log.Write(new MetricRecord { Kind = "train", Step = 1, Loss = 6, LearningRate = 1e-4 });
            log.Write(new MetricRecord { Kind = "eval", Step = 1, Loss = 5.5 });
            log.Write(new MetricRecord { Kind = "train", Step = 2, Loss = 3, LearningRate = 2e-4 });
            (double[] steps, double[] rates) = log.LearningRate.Points();
            CollectionAssert.AreEqual(new double[] { 1, 2 }, steps);
            CollectionAssert.AreEqual(new[] { 1e-4, 2e-4 }, rates);
        }

        // Reopened for a resume, the kept lines rebuild the curve.
        using MetricsLog resumed = MetricsLog.Open(temp.File("metrics.jsonl"), resumeStep: 2);
        Assert.AreEqual(2, resumed.LearningRate.Count);
    }

    [TestMethod]
    public void Write_WithLearningRateAndSteepDrop_WritesAPng()
    {
        using var temp = new TempDir();
        var train = new LossSeries();
        var lr = new LossSeries();
        for (int step = 1; step <= 300; step++)
        {
            // A drop from 6 to ~1.6 in 20 steps, then a slow decline: the shape a linear axis flattens.
            train.Add(step, 1.5 + (4.5 * Math.Exp(-step / 5.0)) + (0.3 * (300 - step) / 300));
            lr.Add(step, 2e-3 * Math.Min(1, step / 15.0) * (0.5 * (1 + Math.Cos(Math.PI * step / 300))));
        }

        string path = temp.File("loss.png");
        LossCurvePlot.Write(path, train, new LossSeries(), "log axis + learning rate", learningRate: lr);
        byte[] png = File.ReadAllBytes(path);
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, png[..4]);
        string? keep = Environment.GetEnvironmentVariable("ONNX_LORA_KEEP_PLOT");
        if (!string.IsNullOrEmpty(keep))
        {
            File.Copy(path, keep, overwrite: true);
        }
    }
}
