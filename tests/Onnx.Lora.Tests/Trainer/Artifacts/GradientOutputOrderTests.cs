using System.Text.RegularExpressions;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer.Artifacts;

/// <summary>
/// <see cref="GradientOutputOrder"/>: where the training graph puts the nodes that write the gradient outputs, and what
/// that order does to ONNX Runtime's memory, read off ORT's own profiler (arena bytes in use after each kernel).
/// </summary>
[TestClass]
public sealed partial class GradientOutputOrderTests
{
    private const int Batch = 8, Seq = 128;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void MakeTraining_GradientProducers_SitAtTheEndWithTheLastLayerLast()
    {
        using Model model = StoriesTraining(recompute: false, out string[] trainable);
        IReadOnlyList<Node> nodes = model.Graph.Nodes;
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < nodes.Count; i++)
        {
            index[nodes[i]] = i;
        }

        var producers = trainable.Select(name => model.Graph.Outputs.Single(o => o.Name == TrainingGraph.GradientOutput(name)).Producer!)
            .Select(named => (Named: named, Writer: GradientOutputOrder.ExclusiveProducer(named) ?? named)).ToArray();

        // Every gradient writer and its naming Identity are in the last 2·k places before the shape-read chain
        // (ShapeReadsInForward): nothing else runs after them.
        int chain = ChainLength(model.Graph);
        int tail = nodes.Count - chain - (2 * trainable.Length);
        Assert.IsTrue(producers.All(p => index[p.Writer] >= tail && index[p.Named] >= tail && index[p.Named] < nodes.Count - chain), "the gradient writers close the graph");
        Assert.IsTrue(producers.All(p => GradientOutputOrder.ExclusiveProducer(p.Named) is not null), "each gradient has a writer ORT lets name the output");

        // A later layer's gradient is finished earlier by the backward pass, so it gets a higher index (ORT takes it first).
        int[] layers = trainable.Select(n => int.Parse(LayerNumber().Match(n).Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        for (int i = 0; i < trainable.Length; i++)
        {
            for (int j = 0; j < trainable.Length; j++)
            {
                if (layers[i] < layers[j])
                {
                    Assert.IsLessThan(index[producers[j].Writer], index[producers[i].Writer], $"{trainable[i]} (layer {layers[i]}) before {trainable[j]} (layer {layers[j]})");
                }
            }
        }
    }

    [TestMethod]
    public void MakeTraining_WithRecomputation_OrtHoldsLessThanWithTheFirstLayersGradientTakenFirst()
    {
        using Model ordered = StoriesTraining(recompute: true, out string[] trainable);
        byte[] good = OnnxWriter.ToBytes(ordered);

        // The same graph with the gradient writers in the opposite order: the first layer's, which the backward reaches
        // last, gets the highest index, as the backward builder emits them.
        Node[] writers = [.. ordered.Graph.Nodes.SkipLast(ChainLength(ordered.Graph)).TakeLast(2 * trainable.Length)];
        Node[] chain = [.. ordered.Graph.Nodes.TakeLast(ChainLength(ordered.Graph))];
        foreach (Node n in writers.Take(trainable.Length).Reverse().Concat(writers.Skip(trainable.Length).Reverse()).Concat(chain))
        {
            ordered.Graph.MoveToEnd(n);
        }

        byte[] reversed = OnnxWriter.ToBytes(ordered);
        using var temp = new TempDir();
        (double goodLoss, long goodPeak) = RunProfiled(good, trainable, ordered, temp.File("good"));
        (double reversedLoss, long reversedPeak) = RunProfiled(reversed, trainable, ordered, temp.File("reversed"));

        Console.WriteLine($"GRADORDER | ORT arena in use at peak: {goodPeak >> 10} KiB ordered, {reversedPeak >> 10} KiB reversed; loss {goodLoss:F6} / {reversedLoss:F6}");
        Assert.AreEqual(reversedLoss, goodLoss, 1e-6 * Math.Abs(goodLoss), "only the order changes");
        Assert.IsLessThan(0.8 * reversedPeak, goodPeak, "each layer's weight gradients run right after its backward, not all at the end");
    }

    [GeneratedRegex(@"layers[./](\d+)")]
    private static partial Regex LayerNumber();

    /// <summary>stories260K + all-linear LoRA r=4 (float32) made a training graph in memory.</summary>
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Build_LlamaConversionWithOrWithoutKvCache_OrdersGradientWriters(bool kvCache)
    {
        // The conversion with a KV cache once doubled its peak in this order (ORT reached the backward's shape reads of
        // the attention scores only in each layer's backward); with ShapeReadsInForward both forms gain.
        using var temp = new TempDir();
        string path = temp.File("model.onnx");
        using (Model model = Onnx.Lora.Models.Conversion.Llama2cConverter.Convert(Fixtures.Path("stories260K", "stories260K.bin"), kvCache: kvCache))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: false);
            OnnxWriter.Save(model, path);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, temp.File("artifacts"));
        using Model training = OnnxReader.Load(artifacts.TrainingModelPath);
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < training.Graph.Nodes.Count; i++)
        {
            index[training.Graph.Nodes[i]] = i;
        }

        int Writer(string tensor)
        {
            Node named = training.Graph.Outputs.Single(o => o.Name == TrainingGraph.GradientOutput(tensor)).Producer!;
            return index[GradientOutputOrder.ExclusiveProducer(named) ?? named];
        }

        // Ordered: the last layer's gradient (finished first by the backward) has the higher index; the backward
        // builder's own order is the opposite.
        bool lastLayerLast = Writer("model.layers.4.self_attn.q_proj.lora_A.weight") > Writer("model.layers.0.self_attn.q_proj.lora_A.weight");
        Assert.IsTrue(lastLayerLast, $"kv cache {kvCache}: gradient writers in ORT's order");
        Assert.IsTrue(training.Graph.Outputs.Any(o => o.Name == ShapeReadsInForward.Output), "the shape reads are chained to run in the forward");
    }

    /// <summary>The trailing chain of Adds ShapeReadsInForward puts at the end of the graph.</summary>
    private static int ChainLength(Onnx.Lora.Ir.Graph graph) =>
        Enumerable.Reverse(graph.Nodes).TakeWhile(n => n.Name.StartsWith(ShapeReadsInForward.NodePrefix, StringComparison.Ordinal)).Count();

    private static Model StoriesTraining(bool recompute, out string[] trainable)
    {
        Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        trainable = [.. LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: true).TrainableTensors()];
        LossOutputs loss = new CausalLmLoss().Attach(new GraphBuilder(model), model.Graph.Outputs.Single(o => o.Name == "logits"));
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable, recompute);
        return model;
    }

    /// <summary>One step of <paramref name="graph"/> in a profiled session (arena on, memory pattern off, as the trainer runs it): loss, and the most arena bytes in use after any kernel.</summary>
    private static (double Loss, long PeakInUse) RunProfiled(byte[] graph, string[] trainable, Model model, string prefix)
    {
        using SessionOptions options = OrtProfiling.Options(prefix);
        using var session = new InferenceSession(graph, options);
        var rng = new Random(20261203);
        long[] ids = Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512)).ToArray();
        var names = new List<string> { "input_ids", "attention_mask", "labels" };
        var values = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(ids, [Batch, Seq]),
            OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, Batch * Seq).ToArray(), [Batch, Seq]),
            OrtValue.CreateTensorValueFromMemory(ids.ToArray(), [Batch, Seq]),
        };
        foreach (string n in trainable)
        {
            Tensor t = model.Graph.Initializers[n].Initializer!;
            names.Add(n);
            values.Add(OrtValue.CreateTensorValueFromMemory(t.ToArray<float>(), [.. t.Dims]));
        }

        double loss;
        try
        {
            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, names, values, [TrainingGraph.LossOutput, .. trainable.Select(TrainingGraph.GradientOutput)]);
            loss = results[0].GetTensorDataAsSpan<float>()[0];
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }

        return (loss, OrtProfiling.PeakArenaInUse(session));
    }
}
