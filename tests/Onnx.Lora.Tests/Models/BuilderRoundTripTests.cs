using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Graph;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

[TestClass]
public sealed class BuilderRoundTripTests
{
    // Vocabularies of at least 200: OrtRunner draws ids (and token types) from [0, 200).
    private static readonly LlamaConfig s_llama = new() { Layers = 1, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 48, Vocab = 200, MaxPositions = 16 };

    public static IEnumerable<object[]> Builders =>
    [
        ["torch-llama"], ["torch-llama-interleaved-named-untied"], ["gpt2-gemm"], ["bert"], ["genai-fp32"], ["genai-fp16-fused"], ["genai-int4-rotary-nodes"],
    ];

    [TestMethod]
    [DynamicData(nameof(Builders))]
    public void SaveLoad_BuilderModel_SameGraphAndIdenticalOrtOutputs(string kind)
    {
        using var dir = new TempDir();
        string first = dir.File("first.onnx");
        string second = dir.File("second.onnx");
        using Model built = Build(kind);
        OnnxWriter.Save(built, first, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        using Model loaded = OnnxReader.Load(first);
        RoundTripTests.AssertSameGraph(built.Graph, loaded.Graph);
        OnnxWriter.Save(loaded, second, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        using Model reloaded = OnnxReader.Load(second);
        RoundTripTests.AssertSameGraph(loaded.Graph, reloaded.Graph);

        Dictionary<string, float[]> before = OrtRunner.Run(first);
        Dictionary<string, float[]> after = OrtRunner.Run(second);
        Assert.IsTrue(before["logits"].All(float.IsFinite), "logits must be finite");
        foreach ((string name, float[] expected) in before)
        {
            CollectionAssert.AreEqual(expected, after[name], $"output '{name}' changed after the round trip");
        }
    }

    private static Model Build(string kind) => kind switch
    {
        "torch-llama" => TorchLlamaBuilder.Build(s_llama),
        "torch-llama-interleaved-named-untied" => TorchLlamaBuilder.Build(s_llama with { Rope = RopeStyle.Interleaved, Naming = InitializerNaming.Named, TiedEmbeddings = false }),
        "gpt2-gemm" => Gpt2Builder.Build(new Gpt2Config { Layers = 1, Hidden = 32, Heads = 4, Intermediate = 64, Vocab = 200, MaxPositions = 16, Linear = LinearStyle.Gemm }),
        "bert" => BertBuilder.Build(new BertConfig { Layers = 1, Hidden = 32, Heads = 4, Intermediate = 64, Vocab = 200, TypeVocab = 200, MaxPositions = 16 }),
        "genai-fp32" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_llama }),
        "genai-fp16-fused" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_llama, Precision = DataType.Float16, FusedQkv = true }),
        "genai-int4-rotary-nodes" => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_llama, Int4 = true, RotaryEmbeddingNodes = true }),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };
}
