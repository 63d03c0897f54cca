using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer.Artifacts;

/// <summary>
/// <see cref="ShapeReadsInForward"/> on the llama2.c conversion with a KV cache (what `train` makes of the embedded
/// .bin): where the reads go, that every output is unchanged, and what ONNX Runtime's profiler says it saves.
/// </summary>
[TestClass]
public sealed class ShapeReadsInForwardTests
{
    private const int Batch = 8, Seq = 128;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Build_KvCacheConversion_MovesEveryBackwardShapeReadOfAForwardValueNextToItsProducer()
    {
        using var temp = new TempDir();
        using Model training = OnnxReader.Load(BuildStories(temp, kvCache: true).TrainingModelPath);
        IReadOnlyList<Node> nodes = training.Graph.Nodes;
        Node chainEnd = training.Graph.Outputs.Single(o => o.Name == ShapeReadsInForward.Output).Producer!;
        Assert.AreSame(nodes[^1], chainEnd, "the chain's end is the highest node index: ORT takes it first");

        // The chain closes with the Sizes of the token count and the loss (those values' readers are graph outputs, which
        // ORT would otherwise reach after the backward), each right after the node that computes it.
        Node? add = chainEnd;
        foreach (string name in new[] { TrainingGraph.TokenCountOutput, TrainingGraph.LossOutput })
        {
            Value early = training.Graph.Outputs.Single(o => o.Name == name).Producer!.Inputs[0]!;
            Node size = add!.Inputs[1]!.Producer!;
            Assert.IsTrue(size.Is("Size") && ReferenceEquals(size.Inputs[0], early), $"the chain counts {name}");
            Assert.AreEqual(IndexOf(nodes, early.Producer!) + 1, IndexOf(nodes, size), $"the Size of {name} follows its producer");
            add = add.Inputs[0]?.Producer;
        }

        // Walk the rest back: every read it counts sits right after the node that makes the value it reads.
        int reads = 0;
        for (; add is not null && add.Is("Add"); add = add.Inputs[0]?.Producer)
        {
            Node count = add.Inputs[1]!.Producer!;
            Node read = count.Is("Size") && count.Name.StartsWith(ShapeReadsInForward.NodePrefix, StringComparison.Ordinal) ? count.Inputs[0]!.Producer! : count;
            Node producer = read.Inputs[0]!.Producer!;
            int at = IndexOf(nodes, producer);
            Assert.IsTrue(read.Is("Shape") || read.Is("Size"), $"{read.Name} is a shape read");
            Assert.IsTrue(IndexOf(nodes, read) > at && IndexOf(nodes, read) <= at + 8, $"{read.Name} follows {producer.Name}");
            reads++;
        }

        TestContext.WriteLine($"{reads} shape reads chained");
        Assert.IsGreaterThan(50, reads, "the conversion's backward reads the shapes of many forward values");
    }

    [TestMethod]
    public void Build_KvCacheConversion_OrtHoldsLessWithTheReadsInTheForwardAndComputesTheSame()
    {
        using var temp = new TempDir();
        TrainingArtifacts artifacts = BuildStories(temp, kvCache: true);

        // The same graph without the chain: ORT reaches each read only from the backward node that needs it.
        string without = Path.Combine(Path.GetDirectoryName(artifacts.TrainingModelPath)!, "without.onnx");
        using (Model model = OnnxReader.Load(artifacts.TrainingModelPath))
        {
            model.Graph.Outputs.RemoveAll(o => o.Name == ShapeReadsInForward.Output);
            GraphPruning.RemoveUnused(model.Graph);
            OnnxWriter.Save(model, without);
        }

        (Dictionary<string, float[]> a, long peakWith) = RunProfiled(artifacts.TrainingModelPath, temp.File("with"));
        (Dictionary<string, float[]> b, long peakWithout) = RunProfiled(without, temp.File("without"));

        TestContext.WriteLine($"SHAPEREADS | ORT arena in use at peak, {Batch} × {Seq}: {peakWith >> 10} KiB with the reads in the forward, {peakWithout >> 10} KiB without");
        Assert.AreEqual(b.Count, a.Count);
        foreach ((string name, float[] expected) in b)
        {
            CollectionAssert.AreEqual(expected, a[name], $"{name}: the same kernels on the same values, bit for bit");
        }

        // Each layer's attention scores, [8, 8, 128, 128] floats = 4 MiB, no longer wait for that layer's backward.
        Assert.IsLessThan(peakWithout - (8L << 20), peakWith, "at least two layers' scores released in the forward");
    }

    private static TrainingArtifacts BuildStories(TempDir temp, bool kvCache)
    {
        string path = temp.File("model.onnx");
        using (Model model = Onnx.Lora.Models.Conversion.Llama2cConverter.Convert(Fixtures.Path("stories260K", "stories260K.bin"), kvCache: kvCache))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 11, nonZeroB: true);
            OnnxWriter.Save(model, path);
        }

        return TrainingArtifacts.Build(path, temp.File("artifacts"));
    }

    private static int IndexOf(IReadOnlyList<Node> nodes, Node node)
    {
        for (int i = 0; i < nodes.Count; i++)
        {
            if (ReferenceEquals(nodes[i], node))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>One step (arena on, memory pattern and prepacking off, as the trainer runs): the float outputs, and the most arena bytes in use after any kernel.</summary>
    private static (Dictionary<string, float[]> Outputs, long PeakInUse) RunProfiled(string path, string prefix)
    {
        using SessionOptions options = OrtProfiling.Options(prefix);
        using var session = new InferenceSession(path, options);
        var rng = new Random(20261203);
        long[] ids = [.. Enumerable.Range(0, Batch * Seq).Select(_ => (long)rng.Next(3, 512))];
        var feeds = new Dictionary<string, long[]>
        {
            ["input_ids"] = ids,
            ["attention_mask"] = [.. Enumerable.Repeat(1L, Batch * Seq)],
            ["position_ids"] = [.. Enumerable.Range(0, Batch * Seq).Select(i => (long)(i % Seq))],
            ["labels"] = [.. ids],
        };
        string[] fetch = [.. session.OutputMetadata.Where(o => o.Value.ElementDataType == TensorElementType.Float).Select(o => o.Key)];
        float[][] results = OrtRunner.RunBatch(session, feeds, [Batch, Seq], fetch);
        var outputs = new Dictionary<string, float[]>(StringComparer.Ordinal);
        for (int i = 0; i < fetch.Length; i++)
        {
            outputs[fetch[i]] = results[i];
        }

        return (outputs, OrtProfiling.PeakArenaInUse(session));
    }
}
