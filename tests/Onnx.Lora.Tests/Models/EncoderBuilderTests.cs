using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

[TestClass]
public sealed class EncoderBuilderTests
{
    // float32 graph vs a double-precision reference on logits of magnitude ~1 (observed 2.5e-6 GPT-2, 6e-8 BERT).
    private const double ReferenceTolerance = 2e-5;

    private static readonly Gpt2Config s_gpt2 = new() { Layers = 2, Hidden = 32, Heads = 4, Intermediate = 64, Vocab = 50, MaxPositions = 16 };
    private static readonly BertConfig s_bert = new() { Layers = 2, Hidden = 32, Heads = 4, Intermediate = 64, Vocab = 50, MaxPositions = 16, NumLabels = 3 };

    [TestMethod]
    [DataRow(LinearStyle.MatMulAdd, 17L)]
    [DataRow(LinearStyle.Gemm, 17L)]
    [DataRow(LinearStyle.MatMulAdd, 20L)]
    public void Gpt2_MatchesReferenceForward(LinearStyle style, long opset)
    {
        Gpt2Config config = s_gpt2 with { Linear = style, Opset = opset };
        using Model model = Gpt2Builder.Build(config);
        Assert.AreEqual(opset >= 20, model.Graph.Nodes.Any(n => n.OpType == "Gelu"));
        Assert.AreEqual(style == LinearStyle.Gemm, model.Graph.Nodes.Any(n => n.Name == "/transformer/h.1/attn/c_attn/Gemm"));
        using var dir = new TempDir();
        using var runner = ModelRunner.FromModel(model, dir);
        long[] ids = [3, 14, 15, 9, 26, 5];

        float[] actual = runner.Logits(ids);
        double[] expected = ReferenceForward.Gpt2Logits(config, new RandomWeightSource(config.Seed), ids);

        double diff = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.IsTrue(diff <= ReferenceTolerance, $"max |diff| {diff}");
        Assert.IsTrue(expected.Max() - expected.Min() > 0.5, "logits must not be flat");
    }

    [TestMethod]
    [DataRow(17L)]
    [DataRow(20L)]
    public void Bert_WithPaddingAndTokenTypes_MatchesReferenceForward(long opset)
    {
        BertConfig config = s_bert with { Opset = opset };
        using Model model = BertBuilder.Build(config);
        using var dir = new TempDir();
        string path = dir.File("bert.onnx");
        OnnxWriter.Save(model, path);
        long[] ids = [2, 7, 19, 33, 41, 0];
        long[] types = [0, 0, 0, 1, 1, 0];
        long[] mask = [1, 1, 1, 1, 1, 0];

        using var session = new InferenceSession(path);
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, 6]);
        using var typesValue = OrtValue.CreateTensorValueFromMemory(types, [1, 6]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, [1, 6]);
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, ["input_ids", "attention_mask", "token_type_ids"], [idsValue, maskValue, typesValue], ["logits"]);
        float[] actual = outputs[0].GetTensorDataAsSpan<float>().ToArray();
        CollectionAssert.AreEqual(new long[] { 1, 3 }, outputs[0].GetTensorTypeAndShape().Shape);

        double[] expected = ReferenceForward.BertLogits(config, new RandomWeightSource(config.Seed), ids, types, mask);
        double diff = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
        Assert.IsTrue(diff <= ReferenceTolerance, $"max |diff| {diff}");
    }

    [TestMethod]
    public void Bert_Naming_NamedOrAnonymousWeights()
    {
        using Model named = BertBuilder.Build(s_bert with { Naming = InitializerNaming.Named });
        using Model anonymous = BertBuilder.Build(s_bert);
        Node q = named.Graph.Nodes.Single(n => n.Name == "/bert/encoder/layer.1/attention/self/query/MatMul");
        Assert.AreEqual("bert.encoder.layer.1.attention.self.query.weight", q.Inputs[1]!.Name);
        Node qa = anonymous.Graph.Nodes.Single(n => n.Name == "/bert/encoder/layer.1/attention/self/query/MatMul");
        StringAssert.StartsWith(qa.Inputs[1]!.Name, "onnx::MatMul_");
        Assert.IsNotNull(anonymous.Graph.Nodes.SingleOrDefault(n => n.Name == "/classifier/MatMul"));
    }

    [TestMethod]
    public void Build_SameSeed_ByteIdentical()
    {
        CollectionAssert.AreEqual(OnnxWriter.ToBytes(Gpt2Builder.Build(s_gpt2)), OnnxWriter.ToBytes(Gpt2Builder.Build(s_gpt2)));
        CollectionAssert.AreEqual(OnnxWriter.ToBytes(BertBuilder.Build(s_bert)), OnnxWriter.ToBytes(BertBuilder.Build(s_bert)));
        CollectionAssert.AreNotEqual(OnnxWriter.ToBytes(BertBuilder.Build(s_bert)), OnnxWriter.ToBytes(BertBuilder.Build(s_bert with { Seed = 1 })));
    }

    [TestMethod]
    public void Build_HeadsDoNotDivideHidden_Throws() =>
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Gpt2Builder.Build(s_gpt2 with { Heads = 5 }));
}
