using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Injection;

namespace Onnx.Lora.Tests.Rewriter;

[TestClass]
public sealed class PassInfrastructureTests
{
    private sealed class FailingPass : InPlacePass
    {
        protected override PassResult Call(Model model) => throw new GraphValidationException("boom");
    }

    [TestMethod]
    public void Run_PipelineWithFailingPass_NamesThePassAndThoseBefore()
    {
        using Model m = TestGraphs.MatMul();
        var pipeline = new PassPipeline(new RemoveUnusedNodesPass(), new FailingPass());
        var e = Assert.ThrowsExactly<PassException>(() => pipeline.Run(m));
        StringAssert.Contains(e.Message, "FailingPass");
        StringAssert.Contains(e.Message, "RemoveUnusedNodesPass");
        StringAssert.Contains(e.Message, "boom");
    }

    [TestMethod]
    public void Run_RemoveUnusedOnCleanGraph_ReportsNotModified()
    {
        using Model m = TestGraphs.MatMul();
        int nodes = m.Graph.Nodes.Count;
        PassResult result = new RemoveUnusedNodesPass().Run(m);
        Assert.IsFalse(result.Modified);
        Assert.AreEqual(nodes, m.Graph.Nodes.Count);
    }

    [TestMethod]
    public void Run_RemoveUnusedWithDeadBranch_RemovesItAndKeepsOutputs()
    {
        using Model m = TestGraphs.MatMul();
        var b = new GraphBuilder(m);
        b.Mul(m.Graph.Inputs[0], b.Scalar("dead_scale", 2f));
        int nodes = m.Graph.Nodes.Count;
        PassResult result = new PassPipeline(new RemoveUnusedNodesPass()).Run(m);
        Assert.IsTrue(result.Modified);
        Assert.AreEqual(nodes - 1, m.Graph.Nodes.Count);
        Assert.IsFalse(m.Graph.Initializers.Contains("dead_scale"));
        Assert.AreEqual("y", m.Graph.Outputs.Single().Name);
    }

    [TestMethod]
    public void Run_InsertThenPipeline_KeepsOutputsAndInitializers()
    {
        using Model m = TestGraphs.MatMul();
        string[] before = m.Graph.Initializers.Values.Select(v => v.Name).ToArray();
        PassResult result = new PassPipeline(new InsertLoraAdaptersPass(new LoraOptions { Rank = 2 }), new RemoveUnusedNodesPass()).Run(m);
        Assert.IsTrue(result.Modified);
        CollectionAssert.IsSubsetOf(before, m.Graph.Initializers.Values.Select(v => v.Name).ToArray());
        Assert.AreEqual("y", m.Graph.Outputs.Single().Name);
    }
}
