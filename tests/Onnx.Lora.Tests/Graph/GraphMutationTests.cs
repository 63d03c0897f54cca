using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Graph;

[TestClass]
public sealed class GraphMutationTests
{
    private static (GraphBuilder B, Value X, Value Y, Value Z) Chain()
    {
        var b = new GraphBuilder("g");
        Value x = b.Input("x", DataType.Float, 2, 3);
        Value y = b.Op("Relu", [x], name: "relu");
        Value z = b.Op("Neg", [y], name: "neg");
        b.Output(z, "z", DataType.Float, 2, 3);
        return (b, x, y, z);
    }

    [TestMethod]
    public void Build_Chain_LinksProducersAndUses()
    {
        (_, Value x, Value y, Value z) = Chain();
        Assert.AreEqual("relu", y.Producer!.Name);
        Assert.AreEqual(1, x.Uses.Count);
        Assert.AreEqual("relu", x.Uses[0].Node.Name);
        Assert.AreEqual(1, y.Uses.Count);
        Assert.IsTrue(z.IsGraphOutput);
        Assert.IsTrue(x.IsGraphInput);
    }

    [TestMethod]
    public void ReplaceAllUsesWith_GraphOutputWithoutFlag_Throws()
    {
        (GraphBuilder b, Value x, _, Value z) = Chain();
        Value w = b.Op("Abs", [x]);
        Assert.ThrowsExactly<GraphValidationException>(() => z.ReplaceAllUsesWith(w));
        Assert.AreSame(z, b.Graph.Outputs[0]);
    }

    [TestMethod]
    public void ReplaceAllUsesWith_InnerValue_RewiresUsesBothWays()
    {
        (GraphBuilder b, Value x, Value y, _) = Chain();
        Value w = b.Op("Abs", [x], name: "abs");
        y.ReplaceAllUsesWith(w);
        Assert.AreEqual(0, y.Uses.Count);
        Assert.AreEqual(1, w.Uses.Count);
        Assert.AreEqual("neg", w.Uses[0].Node.Name);
    }

    [TestMethod]
    public void Remove_NodeWithUsedOutput_ThrowsAndChangesNothing()
    {
        (GraphBuilder b, Value x, Value y, _) = Chain();
        Node relu = y.Producer!;
        Assert.ThrowsExactly<GraphValidationException>(() => b.Graph.Remove(relu));
        Assert.AreEqual(2, b.Graph.Nodes.Count);
        Assert.AreEqual(1, x.Uses.Count);
    }

    [TestMethod]
    public void Remove_UnusedNode_DetachesItsInputs()
    {
        (GraphBuilder b, Value x, _, _) = Chain();
        Value dead = b.Op("Abs", [x]);
        b.Graph.Remove(dead.Producer!);
        Assert.AreEqual(1, x.Uses.Count);
        Assert.IsNull(dead.Graph);
    }

    [TestMethod]
    public void SortTopologically_ReversedNodes_PullsProducersBeforeConsumers()
    {
        var g = new Onnx.Lora.Ir.Graph("g");
        var x = new Value("x");
        g.Inputs.Add(x);
        var second = new Node("", "Neg", [], ["b"], name: "second");
        var first = new Node("", "Relu", [x], ["a"], name: "first");
        second.AppendInput(first.Outputs[0]);
        var independent = new Node("", "Abs", [x], ["c"], name: "independent");
        g.Add(second);
        g.Add(independent);
        g.Add(first);
        g.SortTopologically();
        CollectionAssert.AreEqual(new[] { "first", "second", "independent" }, g.Nodes.Select(n => n.Name).ToArray());
    }

    [TestMethod]
    public void SortTopologically_NodeAppendedForEarlierConsumer_KeepsOriginalNodesInOrder()
    {
        (GraphBuilder b, Value x, Value y, _) = Chain();
        Node neg = y.Uses[0].Node;
        Value extra = b.Op("Abs", [x], name: "appended");
        Value sum = b.Add(y, extra, "appended_add");
        neg.ReplaceInput(0, sum);
        b.Graph.SortTopologically();
        CollectionAssert.AreEqual(new[] { "relu", "appended", "appended_add", "neg" }, b.Graph.Nodes.Select(n => n.Name).ToArray());
    }

    [TestMethod]
    public void SortTopologically_Cycle_ThrowsNamingANode()
    {
        var g = new Onnx.Lora.Ir.Graph("g");
        var a = new Node("", "Relu", [], ["a"], name: "na");
        var b = new Node("", "Relu", [a.Outputs[0]], ["b"], name: "nb");
        a.AppendInput(b.Outputs[0]);
        g.Add(a);
        g.Add(b);
        var e = Assert.ThrowsExactly<GraphValidationException>(g.SortTopologically);
        StringAssert.Contains(e.Message, "cycle");
    }

    [TestMethod]
    public void SortTopologically_SubgraphReadsOuterValue_KeepsProducerBeforeIf()
    {
        var b = new GraphBuilder("main", 17);
        Value cond = b.Input("cond", DataType.Bool);
        Value x = b.Input("x", DataType.Float, 2);
        var then = new Onnx.Lora.Ir.Graph("then");
        var els = new Onnx.Lora.Ir.Graph("else");
        Node ifNode = new("", "If", [cond], ["out"], [Attr.Graph("then_branch", then), Attr.Graph("else_branch", els)], "if");
        b.Graph.Add(ifNode);
        Value doubled = b.Op("Add", [x, x], name: "outer_add");
        var inner = new Node("", "Neg", [doubled], ["t"], name: "inner_neg");
        then.Add(inner);
        then.Outputs.Add(inner.Outputs[0]);
        var inner2 = new Node("", "Abs", [doubled], ["e"], name: "inner_abs");
        els.Add(inner2);
        els.Outputs.Add(inner2.Outputs[0]);

        CollectionAssert.AreEqual(new[] { doubled }, ifNode.ImplicitInputs().ToArray());
        b.Graph.SortTopologically();
        CollectionAssert.AreEqual(new[] { "outer_add", "if" }, b.Graph.Nodes.Select(n => n.Name).ToArray());
    }

    [TestMethod]
    public void InitializerRename_KeepsPositionAndTensorName()
    {
        var b = new GraphBuilder("g");
        b.Floats("w1", [1], [1f]);
        b.Floats("w2", [1], [2f]);
        b.Graph.Initializers.Rename("w1", "renamed");
        CollectionAssert.AreEqual(new[] { "renamed", "w2" }, b.Graph.Initializers.Values.Select(v => v.Name).ToArray());
        Assert.AreEqual("renamed", b.Graph.Initializers["renamed"].Initializer!.Name);
    }

    [TestMethod]
    public void GraphBuilder_RepeatedNames_AreMadeUnique()
    {
        var b = new GraphBuilder("g");
        Value w1 = b.Floats("w", [1], [1f]);
        Value w2 = b.Floats("w", [1], [2f]);
        Assert.AreNotEqual(w1.Name, w2.Name);
        Assert.AreEqual("w", w1.Name);
    }
}
