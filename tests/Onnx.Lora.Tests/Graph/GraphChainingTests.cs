using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

/// <summary>
/// <see cref="GraphChaining.Prepend"/> on two small graphs whose names collide (both hold an initializer "w" and a
/// node "mm"): the chained model computes back(front(x)) as ORT computes it running the two files in turn.
/// </summary>
[TestClass]
public sealed class GraphChainingTests
{
    private static readonly float[] s_x = [0.5f, -1.25f, 2f, 0.75f, -0.5f, 1.5f];

    // front: x[2,3] → h = x·w (w 3×2); back: h[2,2] → y = relu(h·w) (w 2×2, another tensor of the same name).
    private static (Model Front, Model Back) Pair()
    {
        var front = new GraphBuilder("front");
        Value x = front.Input("x", DataType.Float, new Dim(2), new Dim(3));
        Value w1 = front.Floats("w", [3, 2], [1f, -2f, 0.5f, 3f, -1f, 0.25f]);
        front.Output(front.MatMul(x, w1, name: "mm"), "h", DataType.Float, new Dim(2), new Dim(2));

        var back = new GraphBuilder("back");
        Value h = back.Input("h", DataType.Float, new Dim(2), new Dim(2));
        Value w2 = back.Floats("w", [2, 2], [0.5f, -1f, 2f, 1.5f]);
        back.Output(back.Op("Relu", [back.MatMul(h, w2, name: "mm")]), "y", DataType.Float, new Dim(2), new Dim(2));
        return (front.Model, back.Model);
    }

    private static float[] Run(string path, string input, float[] data, int[] dims)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL };
        using var session = new InferenceSession(path, options);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor(input, new DenseTensor<float>(data, dims))]);
        return results[0].AsTensor<float>().ToArray();
    }

    [TestMethod]
    public void Prepend_CollidingNames_RenamesFrontsAndComputesBackOfFront()
    {
        using var dir = new TempDir();
        (Model front, Model back) = Pair();
        OnnxWriter.Save(front, dir.File("front.onnx"));
        OnnxWriter.Save(back, dir.File("back.onnx"));
        float[] h = Run(dir.File("front.onnx"), "x", s_x, [2, 3]);
        float[] expected = Run(dir.File("back.onnx"), "h", h, [2, 2]);

        IReadOnlyList<string> taken = GraphChaining.Prepend(back, front, "h", "front.onnx");
        OnnxWriter.Save(back, dir.File("chained.onnx"));

        CollectionAssert.AreEqual(new[] { "x" }, taken.ToArray());
        CollectionAssert.AreEqual(new[] { "x" }, back.Graph.Inputs.Select(v => v.Name).ToArray());
        CollectionAssert.AreEquivalent(new[] { "w", GraphChaining.CollisionPrefix + "w" }, back.Graph.Initializers.Values.Select(v => v.Name).ToArray());
        Assert.AreEqual(GraphChaining.CollisionPrefix + "mm", back.Graph.Nodes[0].Name, "front's node comes first, renamed");
        CollectionAssert.AreEqual(expected, Run(dir.File("chained.onnx"), "x", s_x, [2, 3]));
        front.Dispose();
        back.Dispose();
    }

    [TestMethod]
    public void Prepend_FrontWithoutTheJoinOutput_ThrowsNamingIt()
    {
        (Model front, Model back) = Pair();
        front.Graph.Outputs[0].Name = "hidden";
        var e = Assert.ThrowsExactly<GraphValidationException>(() => GraphChaining.Prepend(back, front, "h", "front.onnx"));
        StringAssert.Contains(e.Message, "'front.onnx' has no output 'h'");
        front.Dispose();
        back.Dispose();
    }

    [TestMethod]
    public void Prepend_JoinTypesDiffer_Throws()
    {
        (Model front, Model back) = Pair();
        back.Graph.Inputs[0].Type = Onnx.Lora.Ir.ValueType.Tensor(DataType.Float16, Shape.Of(new Dim(2), new Dim(2)));
        var e = Assert.ThrowsExactly<GraphValidationException>(() => GraphChaining.Prepend(back, front, "h", "front.onnx"));
        StringAssert.Contains(e.Message, "makes 'h' as");
        front.Dispose();
        back.Dispose();
    }
}
