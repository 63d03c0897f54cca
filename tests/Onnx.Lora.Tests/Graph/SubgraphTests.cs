using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

[TestClass]
public sealed class SubgraphTests
{
    [TestMethod]
    public void SaveLoad_IfWithOuterScopeReads_RunsInOrtWithSameOutputs()
    {
        var b = new GraphBuilder("main", 17);
        Value x = b.Input("x", DataType.Float, 3);
        Value zero = b.Scalar("zero", 0f);
        Value sum = b.Op("ReduceSum", [x], [Attr.Int("keepdims", 0)]);
        Value cond = b.Op("Greater", [sum, zero]);
        Value doubled = b.Add(x, x);

        var then = new Onnx.Lora.Ir.Graph("then");
        var neg = new Node("", "Neg", [doubled], ["then_out"], name: "then_neg");
        then.Add(neg);
        then.Outputs.Add(GraphBuilder.Typed(neg.Outputs[0], DataType.Float, 3));
        var els = new Onnx.Lora.Ir.Graph("else");
        var abs = new Node("", "Abs", [x], ["else_out"], name: "else_abs");
        els.Add(abs);
        els.Outputs.Add(GraphBuilder.Typed(abs.Outputs[0], DataType.Float, 3));
        var ifNode = new Node("", "If", [cond], ["y"], [Attr.Graph("then_branch", then), Attr.Graph("else_branch", els)], "if");
        b.Graph.Add(ifNode);
        b.Output(ifNode.Outputs[0], null, DataType.Float, 3);

        using var temp = new TempDir();
        OnnxWriter.Save(b.Model, temp.File("if.onnx"));
        using Model loaded = OnnxReader.Load(temp.File("if.onnx"));
        Node reloadedIf = loaded.Graph.Nodes.Single(n => n.OpType == "If");
        CollectionAssert.AreEquivalent(new[] { doubled.Name, "x" }, reloadedIf.ImplicitInputs().Select(v => v.Name).ToArray(), "the branches read the outer Add and the graph input");
        Assert.AreEqual("Add", loaded.Graph.FindValue(doubled.Name)!.Producer!.OpType);
        OnnxWriter.Save(loaded, temp.File("again.onnx"));

        float[] expected = OrtRunner.Run(temp.File("if.onnx"))["y"];
        float[] actual = OrtRunner.Run(temp.File("again.onnx"))["y"];
        CollectionAssert.AreEqual(expected, actual);
        RoundTripTests.AssertSameGraph(loaded.Graph, OnnxReader.Load(temp.File("again.onnx")).Graph);
    }
}
