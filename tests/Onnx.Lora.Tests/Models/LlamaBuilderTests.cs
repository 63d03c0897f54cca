using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Ir.Quantization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

[TestClass]
public sealed class LlamaBuilderTests
{
    // fp32 decomposed attention (ours) vs ORT's fused GroupQueryAttention kernel on logits of magnitude ~1
    // (observed: 1.1e-5 rotate-half, 4.8e-6 interleaved, 2.9e-6 KV-cache step, 0 int4 vs dequantized).
    private const float Fp32Tolerance = 5e-5f;

    // fp16 weights and activations vs fp32: ~3 decimal digits per op over two layers (observed 1.4e-2).
    private const float Fp16Tolerance = 2e-2f;

    private static readonly LlamaConfig s_small = new() { Layers = 2, Hidden = 64, Heads = 4, KvHeads = 2, Intermediate = 96, Vocab = 128, MaxPositions = 32 };
    private static readonly long[] s_ids = [1, 17, 5, 99, 42, 3, 127, 64];

    [TestMethod]
    [DataRow(RopeStyle.RotateHalf)]
    [DataRow(RopeStyle.Interleaved)]
    public void TorchAndGenAi_SameWeights_SameLogits(RopeStyle rope)
    {
        using var dir = new TempDir();
        LlamaConfig config = s_small with { Rope = rope };
        using var torch = ModelRunner.FromModel(TorchLlamaBuilder.Build(config), dir, "torch.onnx");
        using var genai = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = config }), dir, "genai.onnx");

        float[] expected = genai.Logits(s_ids, batch: 2, extra: EmptyPast(config, 2, DataType.Float, out var dispose));
        float[] actual = torch.Logits(s_ids, batch: 2);
        dispose();

        float diff = OrtRunner.MaxAbsDiff(expected, actual);
        Assert.IsTrue(diff <= Fp32Tolerance, $"max |diff| {diff}");
        Assert.IsTrue(expected.Max() - expected.Min() > 0.5f, "logits must not be flat");
    }

    [TestMethod]
    public void TorchLlama_DifferentRopeStyles_GiveDifferentLogits()
    {
        using var dir = new TempDir();
        using var a = ModelRunner.FromModel(TorchLlamaBuilder.Build(s_small with { Rope = RopeStyle.RotateHalf }), dir, "a.onnx");
        using var b = ModelRunner.FromModel(TorchLlamaBuilder.Build(s_small with { Rope = RopeStyle.Interleaved }), dir, "b.onnx");
        Assert.IsTrue(OrtRunner.MaxAbsDiff(a.Logits(s_ids), b.Logits(s_ids)) > 1e-3f);
    }

    [TestMethod]
    public void TorchLlama_RightPadding_DoesNotChangeEarlierTokens()
    {
        using var dir = new TempDir();
        using var runner = ModelRunner.FromModel(TorchLlamaBuilder.Build(s_small), dir);
        float[] plain = runner.Logits([1, 17, 5, 99]);
        float[] padded = runner.Logits([1, 17, 5, 99, 0, 0], mask: [1, 1, 1, 1, 0, 0]);
        Assert.IsTrue(OrtRunner.MaxAbsDiff(plain, padded[..plain.Length]) <= 1e-6f);
    }

    [TestMethod]
    public void TorchLlama_Untied_HasOwnClassifier()
    {
        using Model model = TorchLlamaBuilder.Build(s_small with { TiedEmbeddings = false, Naming = InitializerNaming.Named });
        Node head = model.Graph.Nodes.Single(n => n.Name == "/lm_head/MatMul");
        Assert.AreEqual("lm_head.weight", head.Inputs[1]!.Name);
        Assert.AreEqual(model.Graph.Nodes.Count(n => n.OpType == "MatMul" && n.Name.EndsWith("_proj/MatMul", StringComparison.Ordinal)), 7 * s_small.Layers);
    }

    [TestMethod]
    public void GenAi_KvCacheStep_MatchesFullSequence()
    {
        using var dir = new TempDir();
        GenAiLlamaConfig config = new() { Model = s_small };
        using var runner = ModelRunner.FromModel(GenAiLlamaBuilder.Build(config), dir);
        long[] ids = [1, 17, 5, 99, 42, 3];
        float[] full = runner.Logits(ids, extra: EmptyPast(s_small, 1, DataType.Float, out var disposeEmpty));
        disposeEmpty();

        // Prefill 5 tokens, then feed token 6 with the returned cache.
        var session = runner.Session;
        using var prefillIds = OrtValue.CreateTensorValueFromMemory(ids[..5], [1, 5]);
        using var prefillMask = OrtValue.CreateTensorValueFromMemory(new long[] { 1, 1, 1, 1, 1 }, [1, 5]);
        var inputs = new Dictionary<string, OrtValue> { ["input_ids"] = prefillIds, ["attention_mask"] = prefillMask };
        var emptyPast = EmptyPast(s_small, 1, DataType.Float, out var disposePast);
        foreach (var kv in emptyPast)
        {
            inputs[kv.Key] = kv.Value;
        }

        using var runOptions = new RunOptions();
        string[] outputNames = [.. session.OutputNames];
        using var prefill = session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), outputNames);
        disposePast();

        using var stepIds = OrtValue.CreateTensorValueFromMemory(ids[5..], [1, 1]);
        using var stepMask = OrtValue.CreateTensorValueFromMemory(new long[] { 1, 1, 1, 1, 1, 1 }, [1, 6]);
        var stepInputs = new Dictionary<string, OrtValue> { ["input_ids"] = stepIds, ["attention_mask"] = stepMask };
        for (int i = 0; i < outputNames.Length; i++)
        {
            if (outputNames[i].StartsWith("present.", StringComparison.Ordinal))
            {
                stepInputs["past_key_values." + outputNames[i]["present.".Length..]] = prefill[i];
            }
        }

        using var step = session.Run(runOptions, stepInputs.Keys.ToArray(), stepInputs.Values.ToArray(), ["logits"]);
        float[] last = step[0].GetTensorDataAsSpan<float>().ToArray();
        float diff = OrtRunner.MaxAbsDiff(full[^s_small.Vocab..], last);
        Assert.IsTrue(diff <= Fp32Tolerance, $"max |diff| {diff}");
    }

    [TestMethod]
    [DataRow(RopeStyle.RotateHalf)]
    [DataRow(RopeStyle.Interleaved)]
    public void GenAi_RotaryEmbeddingNodes_SameLogitsAsDoRotary(RopeStyle rope)
    {
        using var dir = new TempDir();
        LlamaConfig config = s_small with { Rope = rope };
        using Model model = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = config, RotaryEmbeddingNodes = true });
        Assert.AreEqual(2 * config.Layers, model.Graph.Nodes.Count(n => n.Is("RotaryEmbedding", "com.microsoft")));
        using var nodes = ModelRunner.FromModel(model, dir, "rotary.onnx");
        using var fused = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = config }), dir, "gqa.onnx");
        var past = EmptyPast(config, 1, DataType.Float, out var d1);
        var positions = OrtValue.CreateTensorValueFromMemory(Enumerable.Range(0, s_ids.Length).Select(i => (long)i).ToArray(), [1, s_ids.Length]);
        past["position_ids"] = positions; // disposed with the past values by d1
        float[] a = nodes.Logits(s_ids, extra: past);
        d1();
        float[] b = fused.Logits(s_ids, extra: EmptyPast(config, 1, DataType.Float, out var d2));
        d2();
        float diff = OrtRunner.MaxAbsDiff(a, b);
        Assert.IsTrue(diff <= Fp32Tolerance, $"max |diff| {diff}");
    }

    [TestMethod]
    public void GenAi_FusedQkv_SameLogitsAsSeparate()
    {
        using var dir = new TempDir();
        using Model fusedModel = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small, FusedQkv = true });
        Assert.IsNotNull(fusedModel.Graph.Nodes.SingleOrDefault(n => n.Name == "/model/layers.1/attn/qkv_proj/MatMul"));
        Assert.AreEqual(64 + (2 * 32), fusedModel.Graph.Initializers["model.layers.0.attn.qkv_proj.MatMul.weight"].Initializer!.Dims[1]);
        using var fused = ModelRunner.FromModel(fusedModel, dir, "fused.onnx");
        using var separate = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small }), dir, "separate.onnx");
        float[] a = fused.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d1));
        d1();
        float[] b = separate.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d2));
        d2();
        Assert.IsTrue(OrtRunner.MaxAbsDiff(a, b) <= 1e-5f);
    }

    [TestMethod]
    public void GenAi_Fp16_CloseToFp32()
    {
        using var dir = new TempDir();
        using var fp32 = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small }), dir, "fp32.onnx");
        using Model half = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small, Precision = DataType.Float16, FusedQkv = true });
        Assert.AreEqual(DataType.Float16, half.Graph.Outputs[0].ElementType);
        string path = dir.File("fp16.onnx");
        OnnxWriter.Save(half, path);

        float[] expected = fp32.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d1));
        d1();
        using var session = new InferenceSession(path);
        using var ids = OrtValue.CreateTensorValueFromMemory(s_ids, [1, s_ids.Length]);
        using var mask = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, s_ids.Length).ToArray(), [1, s_ids.Length]);
        var inputs = new Dictionary<string, OrtValue> { ["input_ids"] = ids, ["attention_mask"] = mask };
        var emptyPast = EmptyPast(s_small, 1, DataType.Float16, out var d2);
        foreach (var kv in emptyPast)
        {
            inputs[kv.Key] = kv.Value;
        }

        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), ["logits"]);
        d2();
        float[] actual = outputs[0].GetTensorDataAsSpan<Float16>().ToArray().Select(h => (float)h).ToArray();
        float diff = OrtRunner.MaxAbsDiff(expected, actual);
        Assert.IsTrue(diff <= Fp16Tolerance, $"max |diff| {diff}");
    }

    [TestMethod]
    public void GenAi_Int4_MatchesFloatModelWithDequantizedWeights()
    {
        using var dir = new TempDir();
        var source = new RandomWeightSource(s_small.Seed);
        using Model int4 = GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small, Int4 = true }, source);
        Assert.AreEqual(7 * s_small.Layers, int4.Graph.Nodes.Count(n => n.Is("MatMulNBits", "com.microsoft")));
        Assert.IsNotNull(int4.Graph.Nodes.SingleOrDefault(n => n.Name == "/model/layers.0/attn/q_proj/MatMul_Q4"));
        using var quantized = ModelRunner.FromModel(int4, dir, "int4.onnx");
        using var reference = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small }, new DequantizedSource(source)), dir, "deq.onnx");
        using var unquantized = ModelRunner.FromModel(GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small }, source), dir, "float.onnx");

        float[] q = quantized.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d1));
        d1();
        float[] r = reference.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d2));
        d2();
        float[] f = unquantized.Logits(s_ids, extra: EmptyPast(s_small, 1, DataType.Float, out var d3));
        d3();
        float diff = OrtRunner.MaxAbsDiff(q, r);
        Assert.IsTrue(diff <= Fp32Tolerance, $"int4 vs dequantized float: max |diff| {diff}");
        Assert.IsTrue(OrtRunner.MaxAbsDiff(q, f) > 10 * Fp32Tolerance, "quantization must change the logits, else the test proves nothing");
    }

    [TestMethod]
    public void GenAi_DoRotaryWithHeadSize8_ThrowsNamingTheLimit()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => GenAiLlamaBuilder.Build(new GenAiLlamaConfig { Model = s_small with { Hidden = 32 } }));
        StringAssert.Contains(e.Message, "multiple of 16");
    }

    [TestMethod]
    public void Build_SameSeed_ByteIdenticalFiles()
    {
        byte[] torchA = OnnxWriter.ToBytes(TorchLlamaBuilder.Build(s_small));
        byte[] torchB = OnnxWriter.ToBytes(TorchLlamaBuilder.Build(s_small));
        byte[] torchC = OnnxWriter.ToBytes(TorchLlamaBuilder.Build(s_small with { Seed = 7 }));
        CollectionAssert.AreEqual(torchA, torchB);
        CollectionAssert.AreNotEqual(torchA, torchC);

        var genai = new GenAiLlamaConfig { Model = s_small, Int4 = true, FusedQkv = true };
        CollectionAssert.AreEqual(OnnxWriter.ToBytes(GenAiLlamaBuilder.Build(genai)), OnnxWriter.ToBytes(GenAiLlamaBuilder.Build(genai)));
    }

    [TestMethod]
    public void TorchLlama_ExternalData_RoundTripsAndRuns()
    {
        using var dir = new TempDir();
        using Model model = TorchLlamaBuilder.Build(s_small);
        string inline = dir.File("inline.onnx");
        string external = dir.File("external.onnx");
        OnnxWriter.Save(model, inline);
        OnnxWriter.Save(model, external, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        Assert.IsTrue(new FileInfo(external + ".data").Length > 100_000);
        using var a = new ModelRunner(inline);
        using var b = new ModelRunner(external);
        CollectionAssert.AreEqual(a.Logits(s_ids), b.Logits(s_ids));
    }

    /// <summary>Zero-length past KV inputs for a prefill run.</summary>
    internal static Dictionary<string, OrtValue> EmptyPast(LlamaConfig c, int batch, DataType type, out Action dispose)
    {
        var values = new Dictionary<string, OrtValue>();
        for (int l = 0; l < c.Layers; l++)
        {
            foreach (string kind in new[] { "key", "value" })
            {
                long[] shape = [batch, c.KvHeads, 0, c.HeadDim];
                values[$"past_key_values.{l}.{kind}"] = type == DataType.Float
                    ? OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), shape)
                    : OrtValue.CreateTensorValueFromMemory(Array.Empty<Float16>(), shape);
            }
        }

        dispose = () =>
        {
            foreach (OrtValue v in values.Values)
            {
                v.Dispose();
            }
        };
        return values;
    }

    /// <summary>Linear weights replaced by their int4 round trip, computed with the codec.</summary>
    private sealed class DequantizedSource(IWeightSource inner) : IWeightSource
    {
        public ReadOnlyMemory<byte> GetFloat32(WeightRequest request)
        {
            ReadOnlyMemory<byte> bytes = inner.GetFloat32(request);
            if (request.Role != WeightRole.Linear || request.Key == "lm_head.weight")
            {
                return bytes;
            }

            int k = (int)request.Dims[0];
            int n = (int)request.Dims[1];
            var weights = MatMulNBitsCodec.Quantize(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.Span), k, n);
            var result = new float[k * n];
            MatMulNBitsCodec.Dequantize(weights, result);
            return System.Runtime.InteropServices.MemoryMarshal.AsBytes(result.AsSpan()).ToArray();
        }
    }
}
