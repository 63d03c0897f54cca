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
            CollectionAssert.AreEqual(new[] { 1, 2, 3 }, resumed.Records.Select(r => r.Step).ToArray());
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
        LossCurvePlot.Write(path, Curve(), "stories260K LoRA", 800, 450);
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
}
