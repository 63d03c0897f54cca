using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Whole-model check on the real stories260K torch-style graph with LoRA on q/k/v/o/gate/up/down: the training
/// artifact's analytic gradient w.r.t. sampled LoRA A/B entries against central finite differences of its own loss.
/// </summary>
[TestClass]
public sealed class Stories260KGradientTests
{
    [TestMethod]
    public void TrainingModel_LoraEntries_MatchFiniteDifferences()
    {
        using var temp = new TempDir();
        string loraPath = temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx")))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 7, nonZeroB: true);
            OnnxWriter.Save(model, loraPath);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraPath, temp.File("artifacts"));
        Assert.AreEqual(5 * 7 * 2, artifacts.Trainable.Count, "A and B for 7 projections in 5 layers");

        Dictionary<string, float[]> parameters;
        using (Model lora = OnnxReader.Load(loraPath))
        {
            parameters = artifacts.Trainable.ToDictionary(t => t.Name, t => lora.Graph.Initializers[t.Name].Initializer!.ToArray<float>());
        }

        const int Batch = 2, Seq = 12;
        var rng = new Random(20261125);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512)).ToArray();
        long[] labels = ids.Select((t, i) => i % Seq < 3 ? -100 : t).ToArray();
        long[] mask = Enumerable.Repeat(1L, Batch * Seq).ToArray();

        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(artifacts.TrainingModelPath, options);
        (double loss0, Dictionary<string, float[]> grads) = Run(session, parameters, ids, mask, labels, [Batch, Seq], artifacts, withGradients: true);
        Console.WriteLine($"WHOLEMODEL | loss {loss0:F4}");
        Assert.IsTrue(double.IsFinite(loss0) && loss0 > 1, $"loss {loss0} of a pretrained model on random tokens should be large and finite");

        // fp32: the loss (~16) is rounded to ~1e-6, so (L+ - L-)/2h with h = 1e-2 carries ~1e-4 absolute noise;
        // relative errors are taken against at least 5e-2 so that noise stays below the 1e-2 bound. The float64 test
        // below is the tight check.
        const double Step = 1e-2;
        const double NoiseFloor = 5e-2;
        double worst = 0;
        int checkedEntries = 0;
        foreach (string name in artifacts.Trainable.Select(t => t.Name).Where((_, i) => i % 9 == 0))
        {
            float[] p = parameters[name];
            int i = rng.Next(p.Length);
            float original = p[i];
            p[i] = (float)(original + Step);
            double plus = Run(session, parameters, ids, mask, labels, [Batch, Seq], artifacts, false).Loss;
            p[i] = (float)(original - Step);
            double minus = Run(session, parameters, ids, mask, labels, [Batch, Seq], artifacts, false).Loss;
            p[i] = original;
            double numeric = (plus - minus) / (2 * Step);
            double analytic = grads[name][i];
            double rel = Math.Abs(analytic - numeric) / Math.Max(NoiseFloor, Math.Max(Math.Abs(analytic), Math.Abs(numeric)));
            Console.WriteLine($"WHOLEMODEL | {name}[{i}] | analytic {analytic:E4} | numeric {numeric:E4} | rel {rel:E2}");
            worst = Math.Max(worst, rel);
            checkedEntries++;
        }

        Console.WriteLine($"WHOLEMODEL | max rel error {worst:E2} over {checkedEntries} entries");
        Assert.IsLessThan(1e-2, worst);
    }

    [TestMethod]
    public void TrainingModelInFloat64_LoraEntries_MatchFiniteDifferencesTo1e6()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        var manifest = LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: true);
        Float64Conversion.Apply(model);
        string[] trainable = manifest.TrainableTensors().ToArray();
        var loss = new Onnx.Lora.Trainer.Loss.CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable);
        var parameters = trainable.ToDictionary(n => n, n => model.Graph.Initializers[n].Initializer!.ToArray<double>());
        var dims = trainable.ToDictionary(n => n, n => model.Graph.Initializers[n].Initializer!.Dims.ToArray());
        byte[] bytes = OnnxWriter.ToBytes(model);
        const int Batch = 2, Seq = 10;
        var rng = new Random(20261126);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512)).ToArray();
        long[] labels = ids.Select((t, i) => i % Seq < 2 ? -100 : t).ToArray();
        long[] mask = Enumerable.Repeat(1L, Batch * Seq).ToArray();
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(bytes, options);

        (double Loss, Dictionary<string, double[]> Grads) RunDouble(bool withGradients)
        {
            var names = new List<string> { "input_ids", "attention_mask", "labels" };
            var values = new List<OrtValue>
            {
                OrtValue.CreateTensorValueFromMemory(ids, [Batch, Seq]),
                OrtValue.CreateTensorValueFromMemory(mask, [Batch, Seq]),
                OrtValue.CreateTensorValueFromMemory(labels, [Batch, Seq]),
            };
            try
            {
                foreach (string n in trainable)
                {
                    names.Add(n);
                    values.Add(OrtValue.CreateTensorValueFromMemory(parameters[n], dims[n]));
                }

                string[] outputs = withGradients ? [TrainingGraph.LossOutput, .. trainable.Select(TrainingGraph.GradientOutput)] : [TrainingGraph.LossOutput];
                using var runOptions = new RunOptions();
                using var results = session.Run(runOptions, names, values, outputs);
                var grads = new Dictionary<string, double[]>();
                for (int k = 1; k < results.Count; k++)
                {
                    grads[trainable[k - 1]] = results[k].GetTensorDataAsSpan<double>().ToArray();
                }

                return (results[0].GetTensorDataAsSpan<double>()[0], grads);
            }
            finally
            {
                foreach (OrtValue v in values)
                {
                    v.Dispose();
                }
            }
        }

        (double loss0, Dictionary<string, double[]> analytic) = RunDouble(true);
        const double Step = 1e-5;
        double worst = 0;
        int count = 0;
        foreach (string name in trainable.Where((_, i) => i % 7 == 0))
        {
            double[] p = parameters[name];
            int i = rng.Next(p.Length);
            double original = p[i];
            p[i] = original + Step;
            double plus = RunDouble(false).Loss;
            p[i] = original - Step;
            double minus = RunDouble(false).Loss;
            p[i] = original;
            double numeric = (plus - minus) / (2 * Step);
            double rel = Math.Abs(analytic[name][i] - numeric) / Math.Max(1e-6, Math.Max(Math.Abs(analytic[name][i]), Math.Abs(numeric)));
            Console.WriteLine($"WHOLEMODEL64 | {name}[{i}] | analytic {analytic[name][i]:E6} | numeric {numeric:E6} | rel {rel:E2}");
            worst = Math.Max(worst, rel);
            count++;
        }

        Console.WriteLine($"WHOLEMODEL64 | loss {loss0:F6} | max rel error {worst:E2} over {count} entries");
        Assert.IsLessThan(1e-6, worst);
    }

    internal static (double Loss, Dictionary<string, float[]> Gradients) Run(
        InferenceSession session, Dictionary<string, float[]> parameters, long[] ids, long[] mask, long[] labels, long[] shape, TrainingArtifacts artifacts, bool withGradients)
    {
        var names = new List<string> { "input_ids", "attention_mask", "labels" };
        var values = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(ids, shape),
            OrtValue.CreateTensorValueFromMemory(mask, shape),
            OrtValue.CreateTensorValueFromMemory(labels, shape),
        };
        try
        {
            foreach (TrainableTensor t in artifacts.Trainable)
            {
                names.Add(t.Name);
                values.Add(OrtValue.CreateTensorValueFromMemory(parameters[t.Name], t.Dims));
            }

            string[] outputs = withGradients ? [TrainingGraph.LossOutput, .. artifacts.Trainable.Select(t => TrainingGraph.GradientOutput(t.Name))] : [TrainingGraph.LossOutput];
            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, names, values, outputs);
            double loss = results[0].GetTensorDataAsSpan<float>()[0];
            var grads = new Dictionary<string, float[]>();
            if (withGradients)
            {
                for (int k = 0; k < artifacts.Trainable.Count; k++)
                {
                    grads[artifacts.Trainable[k].Name] = results[k + 1].GetTensorDataAsSpan<float>().ToArray();
                }
            }

            return (loss, grads);
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }
    }
}
