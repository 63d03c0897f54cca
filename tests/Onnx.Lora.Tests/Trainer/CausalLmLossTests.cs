using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// The causal LM loss (labels shifted, every logit row scored) against the textbook formulation written out in C#:
/// mean over t &lt; S−1 with label[t+1] ≠ −100 of −log softmax(logits[t])[label[t+1]], and its gradient
/// (softmax − onehot)/count on those rows, zero on the last row and on ignored ones.
/// </summary>
[TestClass]
public sealed class CausalLmLossTests
{
    private const int Batch = 2, Seq = 5, Vocab = 7;

    [TestMethod]
    public void TrainingGraph_ShiftedLabels_LossAndLogitGradientMatchSlicedReference()
    {
        var rng = new Random(20261203);
        float[] logits = Enumerable.Range(0, Batch * Seq * Vocab).Select(_ => (float)((rng.NextDouble() * 8) - 4)).ToArray();
        long[] labels = [3, 1, -100, 6, 0, -100, 2, 5, 5, 4];
        var b = new GraphBuilder("logits_only", 17);
        Value table = b.Floats("logits_table", [Batch, Seq, Vocab], logits);
        // The prediction is the trainable tensor itself, so its gradient is d loss / d logits.
        Value prediction = b.Identity(table);
        LossOutputs loss = new CausalLmLoss().Attach(b, prediction);
        TrainingGraph.MakeTraining(b.Model, loss.Loss, loss.TokenCount, ["logits_table"]);
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(OnnxWriter.ToBytes(b.Model), options);
        using var labelsValue = OrtValue.CreateTensorValueFromMemory(labels, [Batch, Seq]);
        using var tableValue = OrtValue.CreateTensorValueFromMemory(logits, [Batch, Seq, Vocab]);
        using var runOptions = new RunOptions();
        using var results = session.Run(runOptions, ["labels", "logits_table"], [labelsValue, tableValue],
            [TrainingGraph.LossOutput, TrainingGraph.TokenCountOutput, TrainingGraph.GradientOutput("logits_table")]);

        (double expectedLoss, double count, double[] expectedGrad) = Reference(logits, labels);
        Assert.AreEqual(count, results[1].GetTensorDataAsSpan<float>()[0]);
        Assert.AreEqual(expectedLoss, results[0].GetTensorDataAsSpan<float>()[0], 1e-6 * Math.Abs(expectedLoss));
        float[] grad = results[2].GetTensorDataAsSpan<float>().ToArray();
        for (int i = 0; i < grad.Length; i++)
        {
            Assert.AreEqual(expectedGrad[i], grad[i], 1e-7, $"d loss / d logits[{i}]");
        }

        Assert.IsTrue(grad.Skip((Seq - 1) * Vocab).Take(Vocab).All(g => g == 0), "the last position has no next token and must get no gradient");
    }

    private static (double Loss, double Count, double[] Grad) Reference(float[] logits, long[] labels)
    {
        double sum = 0, count = 0;
        var grad = new double[logits.Length];
        var rows = new List<(int Row, long Label, double[] P)>();
        for (int bi = 0; bi < Batch; bi++)
        {
            for (int t = 0; t < Seq - 1; t++)
            {
                long label = labels[(bi * Seq) + t + 1];
                if (label == -100)
                {
                    continue;
                }

                int row = (bi * Seq) + t;
                double max = Enumerable.Range(0, Vocab).Max(v => (double)logits[(row * Vocab) + v]);
                double[] e = Enumerable.Range(0, Vocab).Select(v => Math.Exp(logits[(row * Vocab) + v] - max)).ToArray();
                double z = e.Sum();
                sum -= Math.Log(e[label] / z);
                count++;
                rows.Add((row, label, e.Select(x => x / z).ToArray()));
            }
        }

        foreach ((int row, long label, double[] p) in rows)
        {
            for (int v = 0; v < Vocab; v++)
            {
                grad[(row * Vocab) + v] = (p[v] - (v == label ? 1 : 0)) / count;
            }
        }

        return (sum / count, count, grad);
    }
}
