using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Rewriter;
using Onnx.Lora.Rewriter.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer.FixtureModels;

[TestClass]
public sealed class FixtureTrainingTests
{
    [TestMethod]
    [DataRow("ortgenai-tiny-random-gpt2-fp32/past.onnx", 1000)]
    [DataRow("ortgenai-tiny-random-llama-fp32/model.onnx", 32000)]
    [DataRow("ortgenai-tiny-random-llama-fp16/model.onnx", 32000)]
    [DataRow("ortgenai-tiny-gqa/model.onnx", 256)]
    [DataRow("ortgenai-tiny-qwen35/decoder.onnx", 256)]
    [DataRow("ortgenai-tiny-qwen35/text.onnx", 256)]
    [DataRow("ortgenai-tiny-random-lfm2/decoder.onnx", 256)]
    public void Probe(string fixture, int vocab)
    {
        using var temp = new TempDir();
        string path = temp.File("lora.onnx");
        using (Model model = OnnxReader.Load(Fixtures.Path(fixture.Split('/'))))
        {
            Console.WriteLine("INPUTS " + string.Join(", ", model.Graph.Inputs.Select(i => $"{i.Name}:{i.ElementType}")));
            Console.WriteLine("OUTPUTS " + string.Join(", ", model.Graph.Outputs.Select(i => $"{i.Name}:{i.ElementType}")));
            Console.WriteLine("OPS " + string.Join(", ", model.Graph.AllNodes().Select(n => n.OpType).Distinct()));
            foreach (Node n in model.Graph.Nodes.Where(n => n.OpType is "Attention" or "MultiHeadAttention" or "EmbedLayerNormalization").Take(2))
            {
                Console.WriteLine($"NODE {n.OpType} in=[{string.Join(", ", n.Inputs.Select(i => i is null ? "-" : $"{i.Name}<{i.Producer?.OpType}>{i.ElementType}[{string.Join(",", i.Shape?.ToString() ?? "")}]"))}] attrs={string.Join(",", n.Attributes.Select(a => a.Key))}");
            }

            LoraManifest m = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Targets = ["all-linear"], Seed = 3 });
            Console.WriteLine($"MODULES {m.Modules.Count}");
            OnnxWriter.Save(model, path);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, temp.File("artifacts"));
        using (Model tm = OnnxReader.Load(artifacts.TrainingModelPath))
        {
            Console.WriteLine("GRADNODES " + string.Join(", ", tm.Graph.Nodes.Where(n => n.Name.StartsWith("grad/", StringComparison.Ordinal)).GroupBy(n => n.OpType).Select(g => g.Key + "x" + g.Count())));
            Console.WriteLine("GRADOUT " + string.Join(", ", tm.Graph.Outputs.Take(4).Select(o => o.Name + "<-" + o.Producer?.Inputs[0]?.Producer?.OpType)));
        }
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1, LearningRate = 1e-2f });
        var rng = new Random(5);
        long[] ids = Enumerable.Range(0, 2 * 8).Select(_ => (long)rng.Next(0, Math.Min(vocab, 256))).ToArray();
        var batch = new TrainingBatch { InputIds = ids, BatchSize = 2, SequenceLength = 8 };
        var losses = new List<float>();
        for (int i = 0; i < 20; i++)
        {
            losses.Add(session.Step(batch).Loss);
        }

        Console.WriteLine("LOSSES " + string.Join(" ", losses));
    }
}
