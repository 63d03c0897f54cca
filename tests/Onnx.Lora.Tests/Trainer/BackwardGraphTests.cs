using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Autodiff;

namespace Onnx.Lora.Tests.Trainer;

[TestClass]
public sealed class BackwardGraphTests
{
    [TestMethod]
    public void Build_OpWithoutRuleOnTrainablePath_ThrowsNamingOpDomainAndNode()
    {
        var b = new GraphBuilder("g", 17);
        Value a = b.Floats("a", [2], [1f, 2f]);
        Value y = b.Op("Sin", [a], name: "the_sine");
        Value loss = b.Op("ReduceSum", [y], [Attr.Int("keepdims", 0)]);
        var e = Assert.ThrowsExactly<MissingGradientRuleException>(() => BackwardGraph.Build(b.Model, loss, ["a"]));
        StringAssert.Contains(e.Message, "'the_sine' (ai.onnx::Sin)");
    }

    [TestMethod]
    public void Build_UnsupportedOpOnlyOnFrozenPath_DifferentiatesNothingThere()
    {
        // loss = Σ x·sin(W_frozen)·A: Sin has no rule but lies on no path from A, and W gets no gradient node.
        var b = new GraphBuilder("g", 17);
        Value x = b.Floats("x", [1, 2], [1f, 2f]);
        Value w = b.Floats("w_frozen", [2, 2], [1f, 2f, 3f, 4f]);
        Value a = b.Floats("a", [2, 2], [1f, 0f, 0f, 1f]);
        Value h = b.MatMul(x, b.Op("Sin", [w]));
        Value loss = b.Op("ReduceSum", [b.MatMul(h, a)], [Attr.Int("keepdims", 0)]);
        int before = b.Model.Graph.Nodes.Count;
        BackwardResult result = BackwardGraph.Build(b.Model, loss, ["a"]);
        Assert.AreEqual(2, result.DifferentiatedNodes, "ReduceSum and the MatMul with A; not the frozen MatMul nor Sin");
        var backward = b.Model.Graph.Nodes.Skip(before).ToArray();
        Assert.IsFalse(backward.Any(n => n.Inputs.Contains(w)), "no backward node reads the frozen weight");
    }

    [TestMethod]
    public void Build_StopGradientIdentity_CutsThePath()
    {
        // loss = Σ stop(a)·a  ⇒  dloss/da = a (not 2a).
        var b = new GraphBuilder("g", 17);
        Value a = b.Floats("a", [3], [1f, 2f, 3f]);
        Value loss = b.Op("ReduceSum", [b.Mul(b.StopGradient(a), a)], [Attr.Int("keepdims", 0)]);
        Onnx.Lora.Trainer.Artifacts.TrainingGraph.MakeTraining(b.Model, loss, null, ["a"]);
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(Onnx.Lora.Ir.Serialization.OnnxWriter.ToBytes(b.Model));
        using var results = session.Run(Array.Empty<Microsoft.ML.OnnxRuntime.NamedOnnxValue>(), ["a_grad"]);
        CollectionAssert.AreEqual(new[] { 1f, 2f, 3f }, ((Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<float>)results[0].Value).ToArray());
    }

    [TestMethod]
    public void Build_UnknownTrainableName_ThrowsGraphValidationException()
    {
        var b = new GraphBuilder("g", 17);
        Value a = b.Floats("a", [1], [1f]);
        Value loss = b.Op("ReduceSum", [a], [Attr.Int("keepdims", 0)]);
        var e = Assert.ThrowsExactly<GraphValidationException>(() => BackwardGraph.Build(b.Model, loss, ["missing.lora_A.weight"]));
        StringAssert.Contains(e.Message, "missing.lora_A.weight");
    }
}
