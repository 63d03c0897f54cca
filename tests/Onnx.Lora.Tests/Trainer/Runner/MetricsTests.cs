using System.Buffers.Binary;
using System.Text.Json;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Metrics;

namespace Onnx.Lora.Tests.Trainer.Runner;

[TestClass]
public sealed class MetricsTests
{
    private static IEnumerable<MetricRecord> Curve()
    {
        for (int step = 1; step <= 60; step++)
        {
            yield return new MetricRecord { Kind = "train", Step = step, Loss = 6.2 * Math.Exp(-step / 25.0) + 1.1 + (0.05 * Math.Sin(step)), LearningRate = 1e-3, TokensSeen = step * 512L };
            if (step % 10 == 0)
            {
                yield return new MetricRecord { Kind = "eval", Step = step, Loss = 6.0 * Math.Exp(-step / 30.0) + 1.4 };
            }
        }
    }

    [TestMethod]
    public void Write_EachRecord_IsOneFlushedJsonLine()
    {
        using var temp = new TempDir();
        string path = temp.File("metrics.jsonl");
        using (MetricsLog log = MetricsLog.Open(path))
        {
            log.Write(new MetricRecord { Kind = "train", Step = 1, Loss = 2.5, LearningRate = 1e-4, GradNorm = 0.75, TokensSeen = 100 });
            // Flushed: readable while the log is still open.
            string[] early = File.ReadAllLines(path);
            Assert.AreEqual(1, early.Length);
            log.Write(new MetricRecord { Kind = "eval", Step = 1, Loss = Math.Log(10) });
            log.Write(new MetricRecord { Kind = "train", Step = 2, Loss = double.NaN });
        }

        string[] lines = File.ReadAllLines(path);
        Assert.AreEqual(3, lines.Length);
        using JsonDocument first = JsonDocument.Parse(lines[0]);
        Assert.AreEqual(2.5, first.RootElement.GetProperty("loss").GetDouble());
        Assert.AreEqual(0.75, first.RootElement.GetProperty("grad_norm").GetDouble());
        using JsonDocument eval = JsonDocument.Parse(lines[1]);
        Assert.AreEqual(10.0, eval.RootElement.GetProperty("perplexity").GetDouble(), 1e-12);
        using JsonDocument nan = JsonDocument.Parse(lines[2]);
        Assert.AreEqual("NaN", nan.RootElement.GetProperty("loss").GetString());
    }

    [TestMethod]
    public void Open_ForResume_DropsLinesAfterTheCheckpointAndCutLines()
    {
        using var temp = new TempDir();
        string path = temp.File("metrics.jsonl");
        using (MetricsLog log = MetricsLog.Open(path))
        {
            for (int step = 1; step <= 5; step++)
            {
                log.Write(new MetricRecord { Kind = "train", Step = step, Loss = step });
            }
        }

        File.AppendAllText(path, "{\"kind\":\"train\",\"st"); // a line cut by SIGKILL
        using (MetricsLog resumed = MetricsLog.Open(path, resumeStep: 3))
        {
            CollectionAssert.AreEqual(new double[] { 1, 2, 3 }, resumed.TrainLoss.Points().Steps, "kept lines are tracked");
            Assert.AreEqual(3.0, resumed.TrainLoss.Last);
            resumed.Write(new MetricRecord { Kind = "train", Step = 4, Loss = 40 });
        }

        string[] lines = File.ReadAllLines(path);
        Assert.AreEqual(4, lines.Length);
        using JsonDocument last = JsonDocument.Parse(lines[3]);
        Assert.AreEqual(40.0, last.RootElement.GetProperty("loss").GetDouble());
    }

    [TestMethod]
    public void Write_LossCurve_IsAPngOfTheRequestedSize()
    {
        using var temp = new TempDir();
        string path = temp.File("loss.png");
        var train = new LossSeries();
        var eval = new LossSeries();
        foreach (MetricRecord r in Curve())
        {
            (r.Kind == "eval" ? eval : train).Add(r.Step, r.Loss);
        }

        LossCurvePlot.Write(path, train, eval, "stories260K LoRA", 800, 450);
        byte[] png = File.ReadAllBytes(path);
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
        Assert.AreEqual(800, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(16)), "IHDR width");
        Assert.AreEqual(450, BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(20)), "IHDR height");
        Assert.AreEqual(1, Directory.GetFiles(temp.Path).Length, "no temporary file left");
        string? keep = Environment.GetEnvironmentVariable("ONNX_LORA_KEEP_PLOT");
        if (!string.IsNullOrEmpty(keep))
        {
            File.Copy(path, keep, overwrite: true);
        }
    }

    [TestMethod]
    public void Add_FewerPointsThanCapacity_KeepsEveryFiniteOne()
    {
        var series = new LossSeries();
        series.Add(1, 3.0);
        series.Add(2, double.NaN);
        series.Add(3, 1.0);
        series.Add(4, 2.0);

        (double[] steps, double[] losses) = series.Points();
        CollectionAssert.AreEqual(new double[] { 1, 3, 4 }, steps);
        CollectionAssert.AreEqual(new double[] { 3, 1, 2 }, losses);
        Assert.AreEqual(3, series.Count);
        Assert.AreEqual(3.0, series.First);
        Assert.AreEqual(2.0, series.Last);
        Assert.AreEqual(1.0, series.Min);
    }

    [TestMethod]
    public void Add_AMillionSteps_StaysWithinCapacityWithExactStatsAndBucketMeans()
    {
        var series = new LossSeries();
        const int n = 1_000_000;
        for (int step = 1; step <= n; step++)
        {
            series.Add(step, 1.0 + (step * 1e-6));
        }

        (double[] steps, double[] losses) = series.Points();
        Assert.IsLessThanOrEqualTo(LossSeries.Capacity + 1, steps.Length);
        Assert.IsGreaterThan(LossSeries.Capacity / 2, steps.Length);
        Assert.AreEqual(n, series.Count);
        Assert.AreEqual(1.000001, series.First!.Value, 1e-15);
        Assert.AreEqual(2.0, series.Last!.Value, 1e-15);
        Assert.AreEqual(1.000001, series.Min!.Value, 1e-15);
        // The loss is linear in the step, so every averaged point must still lie on the line loss = 1 + step·1e-6.
        for (int i = 0; i < steps.Length; i++)
        {
            Assert.AreEqual(1.0 + (steps[i] * 1e-6), losses[i], 1e-9, $"point {i}");
        }

        Assert.IsTrue(steps.Zip(steps.Skip(1)).All(p => p.First < p.Second), "steps increase");
        Assert.IsLessThan(1024, steps[0], "the curve starts near the first step");
        Assert.IsGreaterThan(n - 1024, steps[^1], "and ends near the last");
    }
}
