using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>The artifacts folder stores the frozen weights once, shared by training.onnx and eval.onnx.</summary>
[TestClass]
public sealed class SharedWeightsTests
{
    private const int Batch = 2, Seq = 6, Vocab = 512;

    [TestMethod]
    public void Build_Stories260K_BothModelsReferenceOneWeightsFileAndGiveTheReferenceLoss()
    {
        using var temp = new TempDir();
        string loraPath = temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx")))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: true);
            OnnxWriter.Save(model, loraPath);
        }

        string folder = temp.File("artifacts");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "training.onnx.data"), "left over by the old two-file layout");
        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraPath, folder);

        CollectionAssert.AreEquivalent(
            new[] { "training.onnx", "eval.onnx", "weights.data", "artifacts.json" },
            Directory.GetFileSystemEntries(folder).Select(Path.GetFileName).ToArray(),
            "one data file, no staging folder, no legacy data file");

        using (Model training = OnnxReader.Load(artifacts.TrainingModelPath))
        using (Model eval = OnnxReader.Load(artifacts.EvalModelPath))
        {
            var external = eval.Graph.Initializers.Values.Select(v => v.Initializer).OfType<ExternalTensor>().ToArray();
            Assert.IsTrue(external.Length >= 10, $"eval.onnx should reference the frozen weights; it has {external.Length} external tensors");
            foreach (ExternalTensor e in external)
            {
                var t = (ExternalTensor)training.Graph.Initializers[e.Name].Initializer!;
                Assert.AreEqual(TrainingArtifacts.WeightsDataFile, e.File.Location, e.Name);
                Assert.AreEqual((t.File.Location, t.Offset, t.Length), (e.File.Location, e.Offset, e.Length), e.Name);
            }

            Assert.IsFalse(eval.Graph.Initializers.Values.Any(v => v.Initializer!.ByteLength >= 1024 && v.Initializer is not ExternalTensor), "no large tensor inline in eval.onnx");
        }

        var rng = new Random(17);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, Vocab)).ToArray();
        double reference = ReferenceLoss(loraPath, ids);
        float trainingLoss = PlainLoss(artifacts.TrainingModelPath, artifacts, ids);
        float evalLoss = PlainLoss(artifacts.EvalModelPath, artifacts, ids);
        Assert.AreEqual(reference, trainingLoss, 1e-4, "training.onnx loss vs cross-entropy of the LoRA model's logits");
        Assert.AreEqual(reference, evalLoss, 1e-4, "eval.onnx loss vs cross-entropy of the LoRA model's logits");
    }

    /// <summary>Runs a model of the artifacts in a plain InferenceSession, trainable tensors left at their defaults.</summary>
    private static float PlainLoss(string path, TrainingArtifacts artifacts, long[] ids)
    {
        using var session = new InferenceSession(path);
        var trainable = artifacts.Trainable.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        var names = new List<string>();
        var values = new List<OrtValue>();
        try
        {
            foreach (string name in session.InputMetadata.Keys.Where(n => !trainable.Contains(n)))
            {
                long[] data = name switch
                {
                    "input_ids" or "labels" => ids,
                    "attention_mask" => Enumerable.Repeat(1L, ids.Length).ToArray(),
                    "position_ids" => Enumerable.Range(0, ids.Length).Select(i => (long)(i % Seq)).ToArray(),
                    _ => throw new AssertFailedException($"unexpected input '{name}' of {path}"),
                };
                names.Add(name);
                values.Add(OrtValue.CreateTensorValueFromMemory(data, [Batch, Seq]));
            }

            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, names, values, [TrainingGraph.LossOutput]);
            return results[0].GetTensorDataAsSpan<float>()[0];
        }
        finally
        {
            values.ForEach(v => v.Dispose());
        }
    }

    /// <summary>Independent reference: the LoRA model's logits through ORT, shifted cross-entropy computed here.</summary>
    private static double ReferenceLoss(string loraPath, long[] ids)
    {
        using var session = new InferenceSession(loraPath);
        using var idsOrt = OrtValue.CreateTensorValueFromMemory(ids, [Batch, Seq]);
        using var maskOrt = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, ids.Length).ToArray(), [Batch, Seq]);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, ["input_ids", "attention_mask"], [idsOrt, maskOrt], ["logits"]);
        float[] logits = results[0].GetTensorDataAsSpan<float>().ToArray();
        double sum = 0;
        for (int b = 0; b < Batch; b++)
        {
            for (int t = 0; t < Seq - 1; t++)
            {
                ReadOnlySpan<float> row = logits.AsSpan(((b * Seq) + t) * Vocab, Vocab);
                double max = row.ToArray().Max();
                double z = row.ToArray().Sum(x => Math.Exp(x - max));
                sum += max + Math.Log(z) - row[(int)ids[(b * Seq) + t + 1]];
            }
        }

        return sum / (Batch * (Seq - 1));
    }
}
