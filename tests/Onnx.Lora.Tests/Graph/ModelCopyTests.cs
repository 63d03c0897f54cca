using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Graph;

/// <summary><see cref="Model.Copy"/>, <see cref="SavedModel.ReferenceWrittenData"/> and the model-in training artifacts built on them.</summary>
[TestClass]
public sealed class ModelCopyTests
{
    private static readonly string s_model = Fixtures.Path("stories260K", "reference-onnx", "model.onnx");

    [TestMethod]
    public void Copy_OfRealModel_SerializesToTheSameBytesAndSharesTensors()
    {
        using Model source = OnnxReader.Load(s_model);
        using Model copy = source.Copy();

        CollectionAssert.AreEqual(OnnxWriter.ToBytes(source), OnnxWriter.ToBytes(copy));
        Assert.IsFalse(ReferenceEquals(source.Graph, copy.Graph));
        Value first = source.Graph.Initializers.Values.First();
        Assert.AreSame(first.Initializer, copy.Graph.Initializers[first.Name].Initializer);
        Assert.AreNotSame(first, copy.Graph.Initializers[first.Name]);
    }

    [TestMethod]
    public void Copy_WhenTheCopyIsRewritten_LeavesTheSourceUnchanged()
    {
        using Model source = OnnxReader.Load(s_model);
        byte[] before = OnnxWriter.ToBytes(source);
        using Model copy = source.Copy();
        Node last = copy.Graph.Nodes[^1];
        copy.Graph.Outputs.Clear();
        copy.Graph.Outputs.Add(last.Inputs[0]!);
        copy.Graph.Remove(last);
        copy.MetadataProps.Add(new("k", "v"));

        Assert.AreNotEqual(before.Length, OnnxWriter.ToBytes(copy).Length);
        CollectionAssert.AreEqual(before, OnnxWriter.ToBytes(source));
        Assert.AreEqual(source.Graph.Nodes.Count, copy.Graph.Nodes.Count + 1);
    }

    [TestMethod]
    public void Copy_WithSubgraphReadingAnOuterValue_RewiresTheSubgraphToTheCopy()
    {
        var graph = new Onnx.Lora.Ir.Graph("main");
        var x = new Value("x", Onnx.Lora.Ir.ValueType.Tensor(DataType.Float, Shape.Of(new Dim(2))));
        var cond = new Value("cond", Onnx.Lora.Ir.ValueType.Tensor(DataType.Bool, Shape.Of()));
        graph.Inputs.Add(x);
        graph.Inputs.Add(cond);
        var then = new Onnx.Lora.Ir.Graph("then");
        Node inner = then.Add(new Node("", "Relu", [x], ["y_then"]));
        then.Outputs.Add(inner.Outputs[0]);
        var otherwise = new Onnx.Lora.Ir.Graph("else");
        Node neg = otherwise.Add(new Node("", "Neg", [x], ["y_else"]));
        otherwise.Outputs.Add(neg.Outputs[0]);
        Node iff = graph.Add(new Node("", "If", [cond], ["y"], [Attr.Graph("then_branch", then), Attr.Graph("else_branch", otherwise)]));
        graph.Outputs.Add(iff.Outputs[0]);
        using var model = new Model(graph);
        model.OpsetImports[""] = 17;

        using Model copy = model.Copy();

        Node copiedIf = copy.Graph.Nodes.Single();
        Onnx.Lora.Ir.Graph copiedThen = copiedIf.GetAttribute("then_branch")!.AsGraph();
        Assert.AreNotSame(then, copiedThen);
        Assert.AreSame(copiedIf, copiedThen.ParentNode);
        Assert.AreSame(copy.Graph.Inputs[0], copiedThen.Nodes[0].Inputs[0], "the subgraph reads the copy's outer value");
        CollectionAssert.AreEqual(new[] { copy.Graph.Inputs[0] }, copiedIf.ImplicitInputs().ToArray());
        CollectionAssert.AreEqual(OnnxWriter.ToBytes(model), OnnxWriter.ToBytes(copy));
    }

    [TestMethod]
    public void ReferenceWrittenData_AfterSingleFileSave_MapsTheSameBytesFromTheDataFile()
    {
        using var dir = new TempDir();
        using Model source = OnnxReader.Load(s_model);
        using Model copy = source.Copy();
        Dictionary<string, byte[]> expected = source.Graph.Initializers.Values.ToDictionary(v => v.Name, v => v.Initializer!.GetBytes().ToArray());

        SavedModel saved = OnnxWriter.Save(source, dir.File("m.onnx"), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = "w.data" });
        int mapped = saved.ReferenceWrittenData(copy);

        Assert.AreEqual(saved.ExternalTensorCount, mapped);
        Assert.IsGreaterThan(20, mapped);
        Assert.AreEqual(Path.GetFullPath(dir.File("w.data")), saved.DataPath);
        foreach (Value v in copy.Graph.Initializers.Values)
        {
            CollectionAssert.AreEqual(expected[v.Name], v.Initializer!.GetBytes().ToArray(), v.Name);
        }

        Assert.AreEqual(mapped, copy.Graph.Initializers.Values.Count(v => v.Initializer is ExternalTensor e && e.File.FullPath == saved.DataPath));
        Assert.IsTrue(source.Graph.Initializers.Values.All(v => v.Initializer is not ExternalTensor), "the saved model itself is not changed");
    }

    [TestMethod]
    public void BuildAndOpenSession_FromLoadedModel_ParseNothingAndLeaveTheGraphAsItWas()
    {
        using var dir = new TempDir();
        string lora = dir.File("lora.onnx");
        (int code, _, string error) = Cli.CliRunner.Run("inject", s_model, "-o", lora, "-r", "4", "--alpha", "8");
        Assert.AreEqual(0, code, error);
        using Model model = OnnxReader.Load(lora);
        byte[] before = OnnxWriter.ToBytes(model);

        using (OnnxReadCounter counter = OnnxReadCounter.Start())
        {
            TrainingArtifacts artifacts = TrainingArtifacts.Build(model, lora, dir.File("artifacts"));
            using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
            Assert.AreEqual(0, counter.Count, string.Join(", ", counter.Paths));
            Assert.IsGreaterThan(0, session.Parameters.Count);
        }

        CollectionAssert.AreEqual(before, OnnxWriter.ToBytes(model), "same graph and bytes; only where the bytes live changed");
        Assert.IsTrue(model.Graph.Initializers.Values.Any(v => v.Initializer is ExternalTensor e && e.File.FullPath.EndsWith(TrainingArtifacts.WeightsDataFile, StringComparison.Ordinal)));
        long evalBytes = new FileInfo(Path.Combine(dir.File("artifacts"), TrainingArtifacts.EvalModelFile)).Length;
        Assert.IsLessThan(new FileInfo(Path.Combine(dir.File("artifacts"), TrainingArtifacts.WeightsDataFile)).Length / 4, evalBytes, "eval.onnx references the shared weights");
    }
}
