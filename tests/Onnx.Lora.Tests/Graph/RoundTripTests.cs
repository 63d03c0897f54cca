using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

[TestClass]
public sealed class RoundTripTests
{
    public static IEnumerable<object[]> FixtureModels => Fixtures.AllModels();

    [TestMethod]
    [DynamicData(nameof(FixtureModels))]
    public void SaveLoad_FixtureModel_KeepsNodesAndTensorBytes(string relativePath)
    {
        string source = Fixtures.Path(relativePath);
        using var temp = new TempDir();
        string copy = temp.File("model.onnx");
        using Model original = OnnxReader.Load(source);
        OnnxWriter.Save(original, copy, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        using Model reloaded = OnnxReader.Load(copy);

        AssertSameGraph(original.Graph, reloaded.Graph);
        CollectionAssert.AreEqual(original.OpsetImports.ToArray(), reloaded.OpsetImports.ToArray());
    }

    [TestMethod]
    [DynamicData(nameof(FixtureModels))]
    public void SaveLoad_FixtureModel_RunsWithIdenticalOutputs(string relativePath)
    {
        string source = Fixtures.Path(relativePath);
        using var temp = new TempDir();
        string copy = temp.File("model.onnx");
        using (Model model = OnnxReader.Load(source))
        {
            OnnxWriter.Save(model, copy, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        }

        Dictionary<string, float[]> before = OrtRunner.Run(source);
        Dictionary<string, float[]> after = OrtRunner.Run(copy);
        CollectionAssert.AreEquivalent(before.Keys.ToArray(), after.Keys.ToArray());
        foreach ((string name, float[] expected) in before)
        {
            CollectionAssert.AreEqual(expected, after[name], $"output '{name}' changed after the round trip");
        }
    }

    internal static void AssertSameGraph(Onnx.Lora.Ir.Graph a, Onnx.Lora.Ir.Graph b)
    {
        Assert.AreEqual(a.Nodes.Count, b.Nodes.Count, "node count");
        for (int i = 0; i < a.Nodes.Count; i++)
        {
            Node x = a.Nodes[i];
            Node y = b.Nodes[i];
            Assert.AreEqual(x.ToString(), y.ToString());
            CollectionAssert.AreEqual(x.Attributes.Keys.ToArray(), y.Attributes.Keys.ToArray(), x.Name);
            foreach ((string key, Attr attr) in x.Attributes)
            {
                Assert.AreEqual(attr.ToString(), y.Attributes[key].ToString(), $"{x.Name}.{key}");
            }
        }

        CollectionAssert.AreEqual(a.Inputs.Select(v => v.Name).ToArray(), b.Inputs.Select(v => v.Name).ToArray());
        CollectionAssert.AreEqual(a.Outputs.Select(v => v.Name).ToArray(), b.Outputs.Select(v => v.Name).ToArray());
        CollectionAssert.AreEqual(a.Initializers.Values.Select(v => v.Name).ToArray(), b.Initializers.Values.Select(v => v.Name).ToArray());
        foreach (Value init in a.Initializers.Values)
        {
            Tensor t1 = init.Initializer!;
            Tensor t2 = b.Initializers[init.Name].Initializer!;
            Assert.AreEqual(t1.DataType, t2.DataType, init.Name);
            CollectionAssert.AreEqual(t1.Dims.ToArray(), t2.Dims.ToArray(), init.Name);
            if (t1 is not StringTensor)
            {
                Assert.IsTrue(t1.GetBytes().Span.SequenceEqual(t2.GetBytes().Span), $"tensor '{init.Name}' bytes differ");
            }
        }
    }
}
