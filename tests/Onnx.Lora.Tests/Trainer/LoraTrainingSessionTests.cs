using System.Security.Cryptography;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.Tokenizers;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Optim;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>Training sessions on stories260K with LoRA (r = 8, α = 16, B = 0) on every projection.</summary>
[TestClass]
public sealed class LoraTrainingSessionTests
{
    private const string Text = "The purple elephant sang quietly about seven lemons and a broken clock under the bright moon.";
    private static TempDir? s_temp;
    private static TrainingArtifacts? s_artifacts;
    private static string? s_basePath;

    private static TrainingArtifacts Artifacts => s_artifacts!;

    [ClassInitialize]
    public static void BuildArtifacts(TestContext context)
    {
        s_temp = new TempDir();
        s_basePath = Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx");
        string loraPath = s_temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(s_basePath))
        {
            LoraForTraining.Inject(model, rank: 8, alpha: 16, seed: 3, nonZeroB: false);
            OnnxWriter.Save(model, loraPath);
        }

        s_artifacts = TrainingArtifacts.Build(loraPath, s_temp.File("artifacts"));
    }

    [ClassCleanup]
    public static void Cleanup() => s_temp?.Dispose();

    private static TrainingBatch TextBatch()
    {
        using FileStream stream = File.OpenRead(Fixtures.Path("stories260K", "tok512.model"));
        LlamaTokenizer tokenizer = LlamaTokenizer.Create(stream);
        long[] ids = [1, .. tokenizer.EncodeToIds(Text).Select(i => (long)i)];
        return new TrainingBatch { InputIds = ids, BatchSize = 1, SequenceLength = ids.Length };
    }

    [TestMethod]
    public void Evaluate_WithFreshAdapter_EqualsCrossEntropyOfBaseModelLogits()
    {
        // Independent reference: the untouched base model's logits through ORT, cross-entropy computed here.
        const int Batch = 2, Seq = 7;
        var rng = new Random(5);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512)).ToArray();
        long[] labels = ids.Select((t, i) => i % Seq == 4 ? -100 : t).ToArray();
        float[] logits;
        using (var session = new InferenceSession(s_basePath!))
        {
            using var idsOrt = OrtValue.CreateTensorValueFromMemory(ids, [Batch, Seq]);
            using var maskOrt = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, Batch * Seq).ToArray(), [Batch, Seq]);
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, ["input_ids", "attention_mask"], [idsOrt, maskOrt], ["logits"]);
            logits = results[0].GetTensorDataAsSpan<float>().ToArray();
        }

        double sum = 0;
        int counted = 0;
        for (int b = 0; b < Batch; b++)
        {
            for (int t = 0; t < Seq - 1; t++)
            {
                long label = labels[(b * Seq) + t + 1];
                if (label == -100)
                {
                    continue;
                }

                ReadOnlySpan<float> row = logits.AsSpan(((b * Seq) + t) * 512, 512);
                double max = double.NegativeInfinity;
                foreach (float x in row)
                {
                    max = Math.Max(max, x);
                }

                double z = 0;
                foreach (float x in row)
                {
                    z += Math.Exp(x - max);
                }

                sum += max + Math.Log(z) - row[(int)label];
                counted++;
            }
        }

        using LoraTrainingSession training = LoraTrainingSession.Create(Artifacts);
        EvalResult eval = training.Evaluate(new TrainingBatch { InputIds = ids, Labels = labels, BatchSize = Batch, SequenceLength = Seq });
        Assert.AreEqual(counted, eval.Tokens, "counted tokens: shifted labels minus ignored ones");
        Assert.AreEqual(sum / counted, eval.Loss, 1e-4, "mean cross-entropy over counted tokens");
    }

    [TestMethod]
    public void Step_OnTextBatch_ChangesOnlyAdapterParametersAndNotTheModelFiles()
    {
        string trainingHash = Hash(Artifacts.TrainingModelPath);
        string dataHash = Hash(Path.Combine(Artifacts.Folder, TrainingArtifacts.WeightsDataFile));
        using LoraTrainingSession session = LoraTrainingSession.Create(Artifacts, new TrainingSessionOptions { LearningRate = 1e-2f });
        var before = session.Parameters.ToDictionary(p => p.Name, p => session.GetParameter(p.Name).ToArray());
        session.Step(TextBatch());
        session.Step(TextBatch());

        // The training graph exposes no frozen weight: its only outputs are the loss, the count, adapter gradients and
        // the int64 scalar ending the chain of shape reads (ShapeReadsInForward).
        using (var plain = new InferenceSession(Artifacts.TrainingModelPath))
        {
            string[] expected = [TrainingGraph.LossOutput, TrainingGraph.TokenCountOutput, .. session.Parameters.Select(p => TrainingGraph.GradientOutput(p.Name)), ShapeReadsInForward.Output];
            CollectionAssert.AreEquivalent(expected, plain.OutputMetadata.Keys.ToArray());
            NodeMetadata reads = plain.OutputMetadata[ShapeReadsInForward.Output];
            Assert.AreEqual(Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int64, reads.ElementDataType);
            Assert.IsEmpty(reads.Dimensions, "a scalar");
        }

        foreach (TrainableTensor p in session.Parameters.Where(p => p.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
        {
            Assert.IsTrue(session.GetParameter(p.Name).ToArray().Any(v => v != 0), $"{p.Name} should have moved away from zero");
        }

        Assert.IsTrue(session.Parameters.All(p => !before[p.Name].SequenceEqual(session.GetParameter(p.Name).ToArray())), "every adapter tensor changed");
        Assert.AreEqual(trainingHash, Hash(Artifacts.TrainingModelPath), "frozen weights stay untouched");
        Assert.AreEqual(dataHash, Hash(Path.Combine(Artifacts.Folder, TrainingArtifacts.WeightsDataFile)));
    }

    [TestMethod]
    public void Step_ThirtyStepsOnFixedBatch_LowersLossSubstantiallyAndDeterministically()
    {
        TrainingBatch batch = TextBatch();
        float[] Train()
        {
            using LoraTrainingSession session = LoraTrainingSession.Create(Artifacts, new TrainingSessionOptions { LearningRate = 1e-2f, IntraOpThreads = 1 });
            return Enumerable.Range(0, 30).Select(_ => session.Step(batch).Loss).ToArray();
        }

        float[] losses = Train();
        Console.WriteLine("LOSSCURVE | " + string.Join(" ", losses.Select(l => l.ToString("F3", System.Globalization.CultureInfo.InvariantCulture))));
        Assert.IsLessThan(0.5f * losses[0], losses[^1], $"loss {losses[0]} -> {losses[^1]}");
        CollectionAssert.AreEqual(losses, Train(), "same data and initial values give identical losses");
    }

    [TestMethod]
    public void Step_WithTwoMicroBatches_UsesTokenWeightedMeanGradient()
    {
        var rng = new Random(9);
        long[] a = Enumerable.Range(0, 2 * 6).Select(_ => (long)rng.Next(3, 512)).ToArray();
        long[] b = Enumerable.Range(0, 1 * 6).Select(_ => (long)rng.Next(3, 512)).ToArray();
        long[] bLabels = b.Select((t, i) => i < 3 ? -100 : t).ToArray();
        long[] aLabels = (long[])a.Clone();
        var options = new TrainingSessionOptions { MaxGradientNorm = 0 };

        // Start from a non-zero B so that every gradient is non-trivial.
        using LoraTrainingSession warm = LoraTrainingSession.Create(Artifacts, new TrainingSessionOptions { LearningRate = 1e-2f });
        warm.Step(TextBatch());
        var start = warm.Parameters.ToDictionary(p => p.Name, p => warm.GetParameter(p.Name).ToArray());

        using LoraTrainingSession accumulated = LoraTrainingSession.Create(Artifacts, options);
        using LoraTrainingSession whole = LoraTrainingSession.Create(Artifacts, options);
        foreach (var (name, values) in start)
        {
            accumulated.SetParameter(name, values);
            whole.SetParameter(name, values);
        }

        accumulated.Step([
            new TrainingBatch { InputIds = a, Labels = aLabels, BatchSize = 2, SequenceLength = 6 },
            new TrainingBatch { InputIds = b, Labels = bLabels, BatchSize = 1, SequenceLength = 6 }]);
        EvalResult all = whole.ComputeGradients(new TrainingBatch { InputIds = [.. a, .. b], Labels = [.. aLabels, .. bLabels], BatchSize = 3, SequenceLength = 6 });
        Assert.AreEqual(10f + 3f, all.Tokens, "2 rows x 5 shifted labels + 5 shifted labels of which 2 are ignored");
        double worst = 0;
        foreach (TrainableTensor p in whole.Parameters)
        {
            float[] x = accumulated.GetGradient(p.Name).ToArray();
            float[] y = whole.GetGradient(p.Name).ToArray();
            double scale = Math.Max(1e-3, y.Max(Math.Abs));
            worst = Math.Max(worst, x.Zip(y).Max(z => Math.Abs(z.First - z.Second)) / scale);
        }

        Assert.IsLessThan(1e-4, worst, "accumulated gradient equals the gradient of the concatenated batch");
    }

    [TestMethod]
    public void AdamW_Vectorized_MatchesScalarReference()
    {
        var rng = new Random(20261125);
        var options = new AdamWOptions { WeightDecay = 0.1f };
        int[] sizes = [37, 300];
        ParameterBuffer[] vec = sizes.Select((n, i) => new ParameterBuffer($"p{i}", new float[n], new float[n])).ToArray();
        double[][] refTheta = sizes.Select(n => new double[n]).ToArray();
        double[][] refM = sizes.Select(n => new double[n]).ToArray();
        double[][] refV = sizes.Select(n => new double[n]).ToArray();
        for (int i = 0; i < sizes.Length; i++)
        {
            for (int j = 0; j < sizes[i]; j++)
            {
                float v = (float)(rng.NextDouble() - 0.5);
                vec[i].Values[j] = v;
                refTheta[i][j] = v;
            }
        }

        using var a = new AdamW(vec, options);
        const float Lr = 3e-3f;
        for (int t = 1; t <= 5; t++)
        {
            for (int i = 0; i < sizes.Length; i++)
            {
                for (int j = 0; j < sizes[i]; j++)
                {
                    float g = (float)(rng.NextDouble() - 0.5);
                    vec[i].Gradients[j] = g;

                    // torch.optim.AdamW, written out in double.
                    refTheta[i][j] *= 1 - (Lr * options.WeightDecay);
                    refM[i][j] = (options.Beta1 * refM[i][j]) + ((1 - options.Beta1) * g);
                    refV[i][j] = (options.Beta2 * refV[i][j]) + ((1 - options.Beta2) * g * g);
                    double mHat = refM[i][j] / (1 - Math.Pow(options.Beta1, t));
                    double vHat = refV[i][j] / (1 - Math.Pow(options.Beta2, t));
                    refTheta[i][j] -= Lr * mHat / (Math.Sqrt(vHat) + options.Epsilon);
                }
            }

            a.Step(Lr);
        }

        for (int i = 0; i < sizes.Length; i++)
        {
            for (int j = 0; j < sizes[i]; j++)
            {
                Assert.AreEqual(refTheta[i][j], vec[i].Values[j], 1e-6, "vectorized C#");
            }
        }
    }

    [TestMethod]
    [DataRow("cuda")]
    [DataRow("tensorrt")]
    public void Create_WithGpuProviderOnCpuRuntime_ThrowsNamingGpuPackage(string provider)
    {
        var options = new TrainingSessionOptions { Provider = ExecutionProviders.Parse(provider) };
        var e = Assert.ThrowsExactly<Onnx.Lora.Trainer.Gpu.ExecutionProviderException>(() => LoraTrainingSession.Create(Artifacts, options));
        StringAssert.Contains(e.Message, "Microsoft.ML.OnnxRuntime.Gpu");
    }

    private static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));
}
