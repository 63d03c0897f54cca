using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer.Artifacts;

/// <summary>
/// Gradient checkpointing (<see cref="ActivationRecomputation"/>): the same loss and gradients with it on and off, run by
/// ONNX Runtime; gradients of the recomputing graph against finite differences; what the pass rewires.
/// </summary>
[TestClass]
public sealed class ActivationRecomputationTests
{
    private const int Batch = 2, Seq = 10;

    [TestMethod]
    public void MakeTraining_WithRecomputationInFloat64_SameLossAndGradientsAndMatchesFiniteDifferences()
    {
        using Training off = Stories64(recompute: false);
        using Training on = Stories64(recompute: true);
        Assert.AreEqual(5, on.RecomputedLayers, "all 5 layers recomputed");

        (double lossOff, Dictionary<string, double[]> gOff) = off.Run<double>(withGradients: true);
        (double lossOn, Dictionary<string, double[]> gOn) = on.Run<double>(withGradients: true);

        // Same ops on the same inputs; ORT may fuse the copies differently from the originals, so allow float64 rounding.
        Assert.AreEqual(lossOff, lossOn, 1e-12 * Math.Abs(lossOff));
        double worst = gOff.Max(kv => MaxRelative(kv.Value, gOn[kv.Key]));
        Console.WriteLine($"RECOMPUTE64 | loss {lossOn:F9} | max rel gradient difference on vs off {worst:E2}");
        Assert.IsLessThan(1e-10, worst);

        // And against finite differences of the recomputing graph's own loss (central, h = 1e-5; float64).
        var rng = new Random(20261203);
        double fdWorst = 0;
        foreach (string name in on.Trainable.Where((_, i) => i % 9 == 0))
        {
            var p = (double[])on.Parameters[name];
            int i = rng.Next(p.Length);
            double original = p[i];
            p[i] = original + 1e-5;
            double plus = on.Run<double>(withGradients: false).Loss;
            p[i] = original - 1e-5;
            double minus = on.Run<double>(withGradients: false).Loss;
            p[i] = original;
            double numeric = (plus - minus) / 2e-5;
            fdWorst = Math.Max(fdWorst, Math.Abs(gOn[name][i] - numeric) / Math.Max(1e-6, Math.Max(Math.Abs(numeric), Math.Abs(gOn[name][i]))));
        }

        Console.WriteLine($"RECOMPUTE64 | max rel error against finite differences {fdWorst:E2}");
        Assert.IsLessThan(1e-6, fdWorst);
    }

    [TestMethod]
    public void Build_WithRecomputationOnABuilderLlama_SameLossAndGradientsInFloat32()
    {
        using var temp = new TempDir();
        string lora = temp.File("lora.onnx");
        using (Model model = TorchLlamaBuilder.Build(new LlamaConfig { Layers = 3, Naming = InitializerNaming.Named, TiedEmbeddings = false }))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 5, nonZeroB: true);
            OnnxWriter.Save(model, lora);
        }

        TrainingArtifacts off = TrainingArtifacts.Build(lora, temp.File("off"));
        TrainingArtifacts on = TrainingArtifacts.Build(lora, temp.File("on"), new TrainingArtifactsOptions { RecomputeActivations = true });
        using Model parametersModel = OnnxReader.Load(lora);
        var parameters = off.Trainable.ToDictionary(t => t.Name, t => parametersModel.Graph.Initializers[t.Name].Initializer!.ToArray<float>());
        var rng = new Random(3);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(0, 256)).ToArray();
        long[] labels = ids.Select((t, i) => i % Seq < 2 ? -100 : t).ToArray();
        long[] mask = ids.Select((_, i) => i >= Seq && i % Seq >= Seq - 2 ? 0L : 1L).ToArray(); // right padding in row 2

        using var options = new SessionOptions { IntraOpNumThreads = 1, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using var sessionOff = new InferenceSession(off.TrainingModelPath, options);
        using var sessionOn = new InferenceSession(on.TrainingModelPath, options);
        (double lossOff, Dictionary<string, float[]> gOff) = Stories260KGradientTests.Run(sessionOff, parameters, ids, mask, labels, [Batch, Seq], off, withGradients: true);
        (double lossOn, Dictionary<string, float[]> gOn) = Stories260KGradientTests.Run(sessionOn, parameters, ids, mask, labels, [Batch, Seq], on, withGradients: true);

        // float32: a fused copy may round differently from the original in the last bits (relative 1e-5 of the
        // tensor's largest entry); in practice the two agree exactly or to a few ulps.
        Assert.AreEqual(lossOff, lossOn, 1e-6 * Math.Abs(lossOff));
        double worst = gOff.Max(kv => MaxRelative(kv.Value.Select(x => (double)x).ToArray(), gOn[kv.Key].Select(x => (double)x).ToArray()));
        Console.WriteLine($"RECOMPUTE32 | loss {lossOn:F6} | max rel gradient difference on vs off {worst:E2}");
        Assert.IsLessThan(1e-5, worst);
        Assert.IsTrue(gOn.Values.All(g => g.Any(x => x != 0)), "every LoRA tensor gets a gradient");
    }

    [TestMethod]
    public void Build_WithRecomputationOnTheKvCacheConversion_RecomputesEveryLayerWithTheSameLossAndGradients()
    {
        // The llama2.c conversion (what `train` makes of the .bin) reshapes gradients to in-layer values' runtime shapes;
        // those Shape reads keep the originals (run in the forward), so every layer can still be recomputed.
        using var temp = new TempDir();
        string lora = temp.File("lora.onnx");
        using (Model model = Onnx.Lora.Models.Conversion.Llama2cConverter.Convert(Fixtures.Path("stories260K", "stories260K.bin"), kvCache: true))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 5, nonZeroB: true);
            OnnxWriter.Save(model, lora);
        }

        RecomputationResult? done = null;
        TrainingArtifacts off = TrainingArtifacts.Build(lora, temp.File("off"));
        TrainingArtifacts on = TrainingArtifacts.Build(lora, temp.File("on"), new TrainingArtifactsOptions { RecomputeActivations = true, Recomputed = r => done = r });
        Assert.AreEqual(5, done?.Layers, "all 5 layers recomputed");

        using var options = new SessionOptions { IntraOpNumThreads = 1, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using var sessionOff = new InferenceSession(off.TrainingModelPath, options);
        using var sessionOn = new InferenceSession(on.TrainingModelPath, options);
        var rng = new Random(3);
        long[] ids = [.. Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512))];
        var feeds = new Dictionary<string, long[]>
        {
            ["input_ids"] = ids,
            ["attention_mask"] = [.. ids.Select(_ => 1L)],
            ["position_ids"] = [.. ids.Select((_, i) => (long)(i % Seq))],
            ["labels"] = [.. ids.Select((t, i) => i % Seq < 2 ? -100 : t)],
        };
        // Every float output of one run (loss first), the LoRA tensors at their initial values.
        string[] outputs = [TrainingGraph.LossOutput, .. sessionOff.OutputMetadata.Keys.Where(k => k.EndsWith("_grad", StringComparison.Ordinal)).Order(StringComparer.Ordinal)];
        float[][] resultsOff = OrtRunner.RunBatch(sessionOff, feeds, [Batch, Seq], outputs), resultsOn = OrtRunner.RunBatch(sessionOn, feeds, [Batch, Seq], outputs);

        double worst = resultsOff.Zip(resultsOn, (a, b) => MaxRelative([.. a.Select(x => (double)x)], [.. b.Select(x => (double)x)])).Max();
        Console.WriteLine($"RECOMPUTEKV | loss {resultsOn[0][0]:F6} / {resultsOff[0][0]:F6} | max rel gradient difference on vs off {worst:E2}");
        Assert.AreEqual(resultsOff[0][0], resultsOn[0][0], 1e-6 * Math.Abs(resultsOff[0][0]));
        Assert.IsLessThan(1e-5, worst);
    }

    [TestMethod]
    public void Apply_OnStories_LayerValuesReachTheBackwardOnlyThroughGatedCopies()
    {
        using Training on = Stories64(recompute: true);
        Onnx.Lora.Ir.Graph g = on.Model.Graph;
        var forward = on.Forward;

        // No backward node reads a value computed inside a layer that only the backward needed: those come from copies.
        // Shape and Size reads keep the original (ShapeReadsInForward runs them in the forward; they hold no data).
        var leaks = g.Nodes.Where(n => !forward.Contains(n) && !n.Name.StartsWith("recompute/", StringComparison.Ordinal) && !n.Is("Shape") && !n.Is("Size"))
            .SelectMany(n => n.Inputs.OfType<Value>())
            .Where(v => v.Producer is { } p && forward.Contains(p) && ActivationRecomputation.LayerOf(p) is not null
                        && !v.Uses.Any(u => forward.Contains(u.Node) && ActivationRecomputation.LayerOf(u.Node) != ActivationRecomputation.LayerOf(p)))
            .Select(v => v.Name).Distinct().ToList();
        Assert.IsEmpty(leaks, $"saved inside-layer values still read by the backward: {string.Join(", ", leaks.Take(5))}");

        // Every copy reads the forward only through Where gates, weights, constants or values of its own layer's copies.
        List<Node> copies = g.Nodes.Where(n => n.Name.StartsWith("recompute/", StringComparison.Ordinal) && !n.Is("Where") && !n.Is("Cast") && !n.Is("Slice") && !n.Is("Reshape")).ToList();
        Assert.IsNotEmpty(copies);
        foreach (Node copy in copies)
        {
            foreach (Value input in copy.Inputs.OfType<Value>())
            {
                bool ok = input.Initializer is not null || input.Producer is null && input.Initializer is not null
                    || input.Producer is { } p && (p.Name.StartsWith("recompute/", StringComparison.Ordinal) || p.Is("Constant") || (forward.Contains(p) && !DependsOnBatch(input)));
                Assert.IsTrue(ok, $"copy '{copy.Name}' reads '{input.Name}' from '{input.Producer?.Name}' ungated");
            }
        }

        int gates = g.Nodes.Count(n => n.Is("Where") && n.Name.StartsWith("recompute/", StringComparison.Ordinal));
        Assert.IsGreaterThanOrEqualTo(5, gates, "at least one gate per layer");
    }

    [TestMethod]
    public void Apply_WithoutLayerNames_ChangesNothing()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        foreach (Node n in model.Graph.Nodes)
        {
            n.Name = n.Name.Replace("layers.", "stage", StringComparison.Ordinal).Replace("layers/", "stage", StringComparison.Ordinal);
        }

        string[] trainable = LoraForTraining.Inject(model, rank: 2, alpha: 4, seed: 1, nonZeroB: false).TrainableTensors().ToArray();
        foreach (Node n in model.Graph.Nodes)
        {
            n.Name = n.Name.Replace("layers/", "stage", StringComparison.Ordinal);
        }

        var loss = new CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));
        var forward = new HashSet<Node>(model.Graph.Nodes, ReferenceEqualityComparer.Instance);
        Onnx.Lora.Trainer.Autodiff.BackwardGraph.Build(model, loss.Loss, trainable);
        int before = model.Graph.Nodes.Count;

        RecomputationResult result = ActivationRecomputation.Apply(model, forward);

        Assert.AreEqual(new RecomputationResult(0, 0, 0), result);
        Assert.AreEqual(before, model.Graph.Nodes.Count);
    }

    [TestMethod]
    public void Apply_WithLoraDropout_KeepsTheDropoutOutputsInsteadOfDrawingAgain()
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        string[] trainable = LoraInjector.Inject(model, new LoraOptions { Rank = 2, Alpha = 4, Dropout = 0.1, TrainingGraph = true, Targets = ["q_proj", "v_proj"], Layers = new HashSet<int> { 4 } }).TrainableTensors().ToArray();
        Assert.IsTrue(model.Graph.Nodes.Any(n => n.Is("Dropout")), "the LoRA branches have dropout");
        var loss = new CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));

        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable, recomputeActivations: true);

        // (q/v of the last layer only: their input needs no gradient, so the dropout needs no mask output.)
        Assert.IsFalse(model.Graph.Nodes.Any(n => n.Is("Dropout") && n.Name.StartsWith("recompute/", StringComparison.Ordinal)), "no dropout is drawn a second time");
        Assert.IsTrue(model.Graph.Nodes.Single(n => n.Is("Dropout") && n.Name.Contains("q_proj", StringComparison.Ordinal)).Outputs[0].Uses.Any(u => u.Node.Name.StartsWith("recompute/", StringComparison.Ordinal)),
            "the copies read the forward's dropped-out activation");
        Assert.IsTrue(model.Graph.Nodes.Any(n => n.Name.StartsWith("recompute/", StringComparison.Ordinal) && n.Is("MatMul")), "the rest of the layers is recomputed");
        using var session = new InferenceSession(OnnxWriter.ToBytes(model), new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR });
        Assert.IsNotNull(session, "ONNX Runtime accepts the graph");
    }

    private static bool DependsOnBatch(Value v)
    {
        var stack = new Stack<Value>([v]);
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        while (stack.TryPop(out Value? x))
        {
            if (!seen.Add(x))
            {
                continue;
            }

            if (x.Producer is null && x.Initializer is null)
            {
                return true;
            }

            foreach (Value input in x.Producer?.Inputs.OfType<Value>() ?? [])
            {
                stack.Push(input);
            }
        }

        return false;
    }

    private static double MaxRelative(double[] a, double[] b)
    {
        double scale = Math.Max(1e-30, a.Max(Math.Abs));
        return a.Zip(b, (x, y) => Math.Abs(x - y)).Max() / scale;
    }

    /// <summary>stories260K + all-linear LoRA r=4 with seeded non-zero B, in float64, as a training graph in memory.</summary>
    private static Training Stories64(bool recompute)
    {
        Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        string[] trainable = LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: true).TrainableTensors().ToArray();
        Float64Conversion.Apply(model);
        var loss = new CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));
        var forward = new HashSet<Node>(model.Graph.Nodes, ReferenceEqualityComparer.Instance);
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable, recompute);
        return new Training(model, trainable, forward);
    }

    private sealed class Training : IDisposable
    {
        private readonly long[] _ids, _mask, _labels;

        public Training(Model model, string[] trainable, HashSet<Node> forward)
        {
            Model = model;
            Trainable = trainable;
            Forward = forward;
            RecomputedLayers = model.Graph.Nodes.Where(n => n.Name.StartsWith("recompute/", StringComparison.Ordinal))
                .Select(n => n.Name.Split('/')[1]).Distinct(StringComparer.Ordinal).Count();
            Parameters = trainable.ToDictionary(n => n, n => (Array)model.Graph.Initializers[n].Initializer!.ToArray<double>());
            var rng = new Random(20261126);
            _ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512)).ToArray();
            _labels = _ids.Select((t, i) => i % Seq < 2 ? -100 : t).ToArray();
            _mask = Enumerable.Repeat(1L, Batch * Seq).ToArray();
        }

        public Model Model { get; }

        public string[] Trainable { get; }

        public HashSet<Node> Forward { get; }

        public int RecomputedLayers { get; }

        public Dictionary<string, Array> Parameters { get; }

        private InferenceSession? _session;

        public void Dispose()
        {
            _session?.Dispose();
            Model.Dispose();
        }

        public (double Loss, Dictionary<string, T[]> Grads) Run<T>(bool withGradients)
            where T : unmanaged
        {
            _session ??= new InferenceSession(OnnxWriter.ToBytes(Model), new SessionOptions { IntraOpNumThreads = 1, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR });
            var names = new List<string> { "input_ids", "attention_mask", "labels" };
            var values = new List<OrtValue>
            {
                OrtValue.CreateTensorValueFromMemory(_ids, [Batch, Seq]),
                OrtValue.CreateTensorValueFromMemory(_mask, [Batch, Seq]),
                OrtValue.CreateTensorValueFromMemory(_labels, [Batch, Seq]),
            };
            try
            {
                foreach (string n in Trainable)
                {
                    names.Add(n);
                    values.Add(OrtValue.CreateTensorValueFromMemory((T[])Parameters[n], Model.Graph.Initializers[n].Initializer!.Dims.ToArray()));
                }

                string[] outputs = withGradients ? [TrainingGraph.LossOutput, .. Trainable.Select(TrainingGraph.GradientOutput)] : [TrainingGraph.LossOutput];
                using var runOptions = new RunOptions();
                using var results = _session.Run(runOptions, names, values, outputs);
                var grads = new Dictionary<string, T[]>();
                for (int k = 1; k < results.Count; k++)
                {
                    grads[Trainable[k - 1]] = results[k].GetTensorDataAsSpan<T>().ToArray();
                }

                double loss = Convert.ToDouble(results[0].GetTensorDataAsSpan<T>()[0], System.Globalization.CultureInfo.InvariantCulture);
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
}
