using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

/// <summary>
/// <see cref="IfBranchInlining.Inline"/> on a graph y = If(flag, then: relu(x·w) + b, else: Identity(x)), with z = y·2
/// after it: with the flag fixed, the inlined graph computes what ORT computes running the If with that flag fed.
/// </summary>
[TestClass]
public sealed class IfBranchInliningTests
{
    private static readonly float[] s_x = [0.5f, -1.25f, 2f, 0.75f];

    private static Model Build()
    {
        var b = new GraphBuilder("main");
        Value flag = b.Input("flag", DataType.Bool, new Dim(1));
        Value x = b.Input("x", DataType.Float, new Dim(2), new Dim(2));
        Value w = b.Floats("w", [2, 2], [1f, -2f, 0.5f, 3f]);
        var then = new Onnx.Lora.Ir.Graph("then");
        Value bias = then.AddInitializer(InMemoryTensor.FromFloats("y", [2], [0.25f, -0.5f])); // a name the main graph also uses
        Value product = then.Add(new Node("", "MatMul", [x, w], ["then/mm"], null, "then/MatMul")).Outputs[0];
        Value relu = then.Add(new Node("", "Relu", [product], ["then/relu"], null, "then/Relu")).Outputs[0];
        Value sum = then.Add(new Node("", "Add", [relu, bias], ["then/y"], null, "then/Add")).Outputs[0];
        sum.Type = Onnx.Lora.Ir.ValueType.Tensor(DataType.Float, new Shape([new Dim(2), new Dim(2)]));
        then.Outputs.Add(sum);
        var otherwise = new Onnx.Lora.Ir.Graph("else");
        Value passed = otherwise.Add(new Node("", "Identity", [x], ["else/x"], null, "else/Identity")).Outputs[0]; // ORT wants an outer value passed through an Identity
        passed.Type = sum.Type;
        otherwise.Outputs.Add(passed);
        Value y = b.Op("If", [flag], [Attr.Graph("then_branch", then), Attr.Graph("else_branch", otherwise)], name: "if");
        b.Output(y, "y", DataType.Float, new Dim(2), new Dim(2));
        b.Output(b.Mul(y, b.Scalar("two", 2f)), "z", DataType.Float, new Dim(2), new Dim(2));
        return b.Model;
    }

    private static float[][] Run(string path, bool? flag)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL };
        using var session = new InferenceSession(path, options);
        var feeds = new List<NamedOnnxValue> { NamedOnnxValue.CreateFromTensor("x", new DenseTensor<float>(s_x, [2, 2])) };
        if (flag is bool f)
        {
            feeds.Add(NamedOnnxValue.CreateFromTensor("flag", new DenseTensor<bool>(new[] { f }, [1])));
        }

        using var results = session.Run(feeds, ["y", "z"]);
        return [.. results.Select(r => r.AsTensor<float>().ToArray())];
    }

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void Inline_FlagFixed_ComputesWhatTheIfComputesWithThatFlag(bool value)
    {
        using var dir = new TempDir();
        using Model model = Build();
        OnnxWriter.Save(model, dir.File("if.onnx"));
        float[][] expected = Run(dir.File("if.onnx"), value);

        Assert.AreEqual(1, IfBranchInlining.Inline(model, "flag", value));
        Assert.IsFalse(model.Graph.Nodes.Any(n => n.Is("If")));
        Assert.IsFalse(model.Graph.Inputs.Any(v => v.Name == "flag"));
        CollectionAssert.AreEqual(new[] { "y", "z" }, model.Graph.Outputs.Select(o => o.Name).ToArray());
        OnnxWriter.Save(model, dir.File("inlined.onnx"));
        float[][] actual = Run(dir.File("inlined.onnx"), null);
        CollectionAssert.AreEqual(expected[0], actual[0], "y");
        CollectionAssert.AreEqual(expected[1], actual[1], "z");
    }

    [TestMethod]
    public void Inline_FlagReadElsewhere_RefusedNamingTheReader()
    {
        using Model model = Build();
        var b = new GraphBuilder(model);
        b.Output(b.Op("Not", [model.Graph.Inputs.First(v => v.Name == "flag")], name: "negate"), "not_flag", DataType.Bool, new Dim(1));
        var error = Assert.ThrowsExactly<GraphValidationException>(() => IfBranchInlining.Inline(model, "flag", false));
        StringAssert.Contains(error.Message, "'negate' (Not)");
    }

    [TestMethod]
    public void Inline_NoSuchInput_LeavesTheGraph()
    {
        using Model model = Build();
        Assert.AreEqual(0, IfBranchInlining.Inline(model, "use_cache_branch", false));
        Assert.AreEqual(1, model.Graph.Nodes.Count(n => n.Is("If")));
    }
}
