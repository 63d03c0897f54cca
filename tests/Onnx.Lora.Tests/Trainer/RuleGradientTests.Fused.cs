using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>Finite-difference checks of the normalization, activation, loss, quantized and attention VJPs.</summary>
public sealed partial class RuleGradientTests
{
    [TestMethod]
    [ChecksGradientOf("LayerNormalization")]
    public void LayerNormalization_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Value b = c.Param("beta", [6]);
        Verify("LayerNormalization", c, Op(c, "LayerNormalization", [x, g, b], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("SimplifiedLayerNormalization")]
    public void SimplifiedLayerNormalization_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Verify("SimplifiedLayerNormalization", c, Op(c, "SimplifiedLayerNormalization", [x, g], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("SimplifiedLayerNormalization")]
    public void SimplifiedLayerNormalization_Float32_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [2, 3, 6], 0.5, 1.5);
        Value skip = c.Param("skip", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Value s = c.B.Add(x, skip);
        Verify("SimplifiedLayerNormalization (fp32)", c, c.B.Add(Op(c, "SimplifiedLayerNormalization", [s, g], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), s), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("RMSNormalization")]
    public void RmsNormalization_Opset23_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Double, 23);
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Verify("RMSNormalization", c, Op(c, "RMSNormalization", [x, g], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("SkipSimplifiedLayerNormalization", Domain = Ms)]
    public void SkipSimplifiedLayerNormalization_BothOutputs_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        // Inputs kept away from zero norm: near it the RMS curvature makes fp32 central differences (h = 1e-2) inexact.
        Value x = c.Param("x", [2, 3, 6], 0.5, 1.5);
        Value skip = c.Param("skip", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        c.B.Model.RequireOpset("com.microsoft", 1);
        IReadOnlyList<Value> o = c.B.OpMulti("SkipSimplifiedLayerNormalization", [x, skip, g], 4, [Attr.Float("epsilon", 1e-5f)], "com.microsoft");
        Verify("SkipSimplifiedLayerNormalization", c, c.B.Add(o[0], o[3]), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("SkipLayerNormalization", Domain = Ms)]
    public void SkipLayerNormalization_WithBetaAndBias_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [2, 3, 6]);
        Value skip = c.Param("skip", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Value beta = c.Param("beta", [6]);
        Value bias = c.Param("bias", [6]);
        c.B.Model.RequireOpset("com.microsoft", 1);
        IReadOnlyList<Value> o = c.B.OpMulti("SkipLayerNormalization", [x, skip, g, beta, bias], 4, [Attr.Float("epsilon", 1e-5f)], "com.microsoft");
        Verify("SkipLayerNormalization", c, c.B.Add(o[0], o[3]), [2, 3, 6]);
    }

    [TestMethod]
    [ChecksGradientOf("Gelu")]
    [ChecksGradientOf("Gelu", Domain = Ms)]
    public void Gelu_ContribAndOnnx_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float, 20);
        Value x = c.Param("x", [3, 5], -2, 2);
        Value ms = MsOp(c, "Gelu", [x]);
        Value tanh = Op(c, "Gelu", [x], Attr.String("approximate", "tanh"));
        Value exact = Op(c, "Gelu", [x]);
        Verify("Gelu (com.microsoft, onnx none/tanh)", c, c.B.Add(c.B.Add(ms, tanh), exact), [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("FastGelu", Domain = Ms)]
    public void FastGelu_WithBias_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -2, 2);
        Value bias = c.Param("bias", [5]);
        Verify("FastGelu", c, MsOp(c, "FastGelu", [x, bias]), [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("RotaryEmbedding", Domain = Ms)]
    [DataRow(0L)]
    [DataRow(1L)]
    public void RotaryEmbedding_MatchesFiniteDifferences(long interleaved)
    {
        var c = new GradCheck(DataType.Float);
        const int Heads = 2, HeadSize = 4, Seq = 3;
        Value x = c.Param("x", [1, Seq, Heads * HeadSize]);
        var cos = new float[Seq * HeadSize / 2];
        var sin = new float[cos.Length];
        for (int p = 0; p < Seq; p++)
        {
            for (int i = 0; i < HeadSize / 2; i++)
            {
                double theta = p / Math.Pow(10000, 2.0 * i / HeadSize);
                cos[(p * HeadSize / 2) + i] = (float)Math.Cos(theta);
                sin[(p * HeadSize / 2) + i] = (float)Math.Sin(theta);
            }
        }

        Value cosCache = c.B.Floats("cos", [Seq, HeadSize / 2], cos);
        Value sinCache = c.B.Floats("sin", [Seq, HeadSize / 2], sin);
        Value pos = c.B.Initializer(InMemoryTensor.FromInt64s("pos", [1, Seq], [0, 1, 2]));
        Value y = MsOp(c, "RotaryEmbedding", [x, pos, cosCache, sinCache], Attr.Int("interleaved", interleaved), Attr.Int("num_heads", Heads));
        Verify($"RotaryEmbedding (interleaved={interleaved})", c, y, [1, Seq, Heads * HeadSize]);
    }

    [TestMethod]
    [ChecksGradientOf("SoftmaxCrossEntropyLoss")]
    [DataRow("mean")]
    [DataRow("sum")]
    public void SoftmaxCrossEntropyLoss_WithIgnoreIndex_MatchesFiniteDifferences(string reduction)
    {
        var c = new GradCheck(DataType.Float);
        Value scores = c.Param("scores", [5, 4], -2, 2);
        Value labels = c.B.Initializer(InMemoryTensor.FromInt64s("labels", [5], [1, -100, 3, 0, 3]));
        Value loss = Op(c, "SoftmaxCrossEntropyLoss", [scores, labels], Attr.String("reduction", reduction), Attr.Int("ignore_index", -100));
        Verify($"SoftmaxCrossEntropyLoss ({reduction})", c, c.B.Reshape(loss, [1]), [1]);
    }

    [TestMethod]
    [ChecksGradientOf(LinearCrossEntropy.OpType, Domain = LinearCrossEntropy.Domain)]
    [DataRow(7L)]
    [DataRow(19L)]
    public void LinearCrossEntropy_UnevenChunksAndIgnoredRows_MatchesFiniteDifferences(long rows)
    {
        // 7 rows in 8 chunks: one row each and an empty last chunk; 19 rows: chunks of 3 and a short last one.
        var c = new GradCheck(DataType.Float);
        Value h = c.Param("h", [rows, 4], -2, 2);
        Value w = c.Const("w", [4, 6], -1.5, 1.5);
        long[] labels = [.. Enumerable.Range(0, (int)rows).Select(i => i % 5 == 1 ? -100L : i % 6)];
        Value label = c.B.Initializer(InMemoryTensor.FromInt64s("labels", [rows], labels));
        IReadOnlyList<Value> outputs = c.B.OpMulti(LinearCrossEntropy.OpType, [h, w, label], 2,
            [Attr.Int("chunks", LinearCrossEntropy.Chunks), Attr.Int("ignore_index", -100)], LinearCrossEntropy.Domain);
        Verify($"LinearCrossEntropy ({rows} rows)", c, c.B.Reshape(outputs[0], [1]), [1]);
    }

    [TestMethod]
    [ChecksGradientOf("MatMulNBits", Domain = Ms)]
    [DataRow(32L, true)]
    [DataRow(24L, false)]
    public void MatMulNBits_Int4Weight_ActivationGradientMatchesFiniteDifferences(long k, bool zeroPoints)
    {
        const long N = 8, BlockSize = 16;
        long blocks = (k + BlockSize - 1) / BlockSize;
        var c = new GradCheck(DataType.Float, 21);
        var rng = new Random(42);
        Value a = c.Param("a", [2, 3, k]);
        byte[] packed = new byte[N * blocks * BlockSize / 2];
        rng.NextBytes(packed);
        float[] scales = Enumerable.Range(0, (int)(N * blocks)).Select(_ => (float)(0.02 + (0.05 * rng.NextDouble()))).ToArray();
        Value b = c.B.Initializer(InMemoryTensor.From("b_q4", DataType.UInt8, [N, blocks, BlockSize / 2], packed.AsSpan()));
        Value s = c.B.Floats("b_scales", [N * blocks], scales);
        Value? zp = null;
        if (zeroPoints)
        {
            byte[] z = new byte[N * ((blocks + 1) / 2)];
            rng.NextBytes(z);
            zp = c.B.Initializer(InMemoryTensor.From("b_zp", DataType.UInt8, [z.Length], z.AsSpan()));
        }

        Value y = MsOp(c, "MatMulNBits", zp is null ? [a, b, s] : [a, b, s, zp], Attr.Int("K", k), Attr.Int("N", N), Attr.Int("bits", 4), Attr.Int("block_size", BlockSize));
        Verify($"MatMulNBits (K={k}, zero points={zeroPoints})", c, y, [2, 3, N]);
    }

    [TestMethod]
    [ChecksGradientOf("GroupQueryAttention", Domain = Ms)]
    [DataRow(false, false)]
    [DataRow(true, false)]
    [DataRow(true, true)]
    public void GroupQueryAttention_CausalGroupedHeads_MatchesFiniteDifferences(bool rotary, bool packed)
    {
        const int Heads = 4, KvHeads = 2, HeadSize = 16, Seq = 5;
        var c = new GradCheck(DataType.Float, 17);
        Value?[] inputs = new Value?[9];
        if (packed)
        {
            inputs[0] = c.Param("qkv", [1, Seq, (Heads + (2 * KvHeads)) * HeadSize]);
        }
        else
        {
            inputs[0] = c.Param("q", [1, Seq, Heads * HeadSize]);
            inputs[1] = c.Param("k", [1, Seq, KvHeads * HeadSize]);
            inputs[2] = c.Param("v", [1, Seq, KvHeads * HeadSize]);
        }

        inputs[5] = c.B.Initializer(InMemoryTensor.From("seqlens_k", DataType.Int32, [1], [Seq - 1]));
        inputs[6] = c.B.Initializer(InMemoryTensor.From("total_seq", DataType.Int32, [], [Seq]));
        if (rotary)
        {
            var cos = new float[Seq * HeadSize / 2];
            var sin = new float[cos.Length];
            for (int p = 0; p < Seq; p++)
            {
                for (int i = 0; i < HeadSize / 2; i++)
                {
                    double theta = p / Math.Pow(10000, 2.0 * i / HeadSize);
                    cos[(p * HeadSize / 2) + i] = (float)Math.Cos(theta);
                    sin[(p * HeadSize / 2) + i] = (float)Math.Sin(theta);
                }
            }

            inputs[7] = c.B.Floats("cos_cache", [Seq, HeadSize / 2], cos);
            inputs[8] = c.B.Floats("sin_cache", [Seq, HeadSize / 2], sin);
        }

        c.B.Model.RequireOpset("com.microsoft", 1);
        IReadOnlyList<Value> o = c.B.OpMulti("GroupQueryAttention", rotary ? inputs : inputs[..7], 3,
            [Attr.Int("num_heads", Heads), Attr.Int("kv_num_heads", KvHeads), Attr.Int("do_rotary", rotary ? 1 : 0)], "com.microsoft");
        Verify($"GroupQueryAttention (rotary={rotary}, packed={packed})", c, o[0], [1, Seq, Heads * HeadSize]);
    }

    [TestMethod]
    [ChecksGradientOf("MultiHeadAttention", Domain = Ms)]
    [DataRow(0L, false)]
    [DataRow(1L, true)]
    public void MultiHeadAttention_WithBiasAndCausalMask_MatchesFiniteDifferences(long unidirectional, bool attentionBias)
    {
        const int Heads = 2, HeadSize = 4, Seq = 4, KvSeq = 4;
        var c = new GradCheck(DataType.Float, 17);
        Value q = c.Param("q", [2, Seq, Heads * HeadSize]);
        Value k = c.Param("k", [2, KvSeq, Heads * HeadSize]);
        Value v = c.Param("v", [2, KvSeq, Heads * HeadSize]);
        Value? bias = attentionBias ? c.Const("attention_bias", [1, Heads, Seq, KvSeq]) : null;
        Value y = MsOp(c, "MultiHeadAttention", [q, k, v, null, null, bias], Attr.Int("num_heads", Heads), Attr.Int("unidirectional", unidirectional));
        Verify($"MultiHeadAttention (unidirectional={unidirectional}, attention_bias={attentionBias})", c, y, [2, Seq, Heads * HeadSize]);
    }

    [TestMethod]
    [ChecksGradientOf("Softplus")]
    public void Softplus_Float32_MatchesFiniteDifferences()
    {
        // ORT's CPU Softplus kernel is float32 only.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -2, 2);
        Verify("Softplus", c, Op(c, "Softplus", [x]), [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("Erf", "Div", "Add", "Mul")]
    public void ExactGeluSubgraph_DivErfAddMul_MatchesFiniteDifferences()
    {
        // GELU as exporters write it without a fused op: y = x · ½ · (1 + erf(x / √2)).
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -2, 2);
        Value erf = Op(c, "Erf", [c.B.Div(x, c.Scalar("sqrt2", Math.Sqrt(2)))]);
        Value y = c.B.Mul(c.B.Mul(x, c.Scalar("gelu_half", 0.5)), c.B.Add(erf, c.Scalar("one", 1)));
        Verify("exact GELU (Div/Erf/Add/Mul)", c, y, [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("Softplus", "Tanh", "Mul")]
    public void MishSubgraph_SoftplusTanhMul_MatchesFiniteDifferences()
    {
        // Mish as exported: y = x · tanh(softplus(x)).
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -2, 2);
        Verify("Mish (Softplus/Tanh/Mul)", c, c.B.Mul(x, Op(c, "Tanh", [Op(c, "Softplus", [x])])), [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("RotaryEmbedding")]
    public void RotaryEmbedding_Opset23WithPositionIds_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float, 23);
        const int Heads = 2, HeadSize = 4, Seq = 3;
        Value x = c.Param("x", [1, Seq, Heads * HeadSize]);
        var cos = new float[Seq * HeadSize / 2];
        var sin = new float[cos.Length];
        for (int p = 0; p < Seq; p++)
        {
            for (int i = 0; i < HeadSize / 2; i++)
            {
                double theta = p / Math.Pow(10000, 2.0 * i / HeadSize);
                cos[(p * HeadSize / 2) + i] = (float)Math.Cos(theta);
                sin[(p * HeadSize / 2) + i] = (float)Math.Sin(theta);
            }
        }

        Value cosCache = c.B.Floats("cos", [Seq, HeadSize / 2], cos);
        Value sinCache = c.B.Floats("sin", [Seq, HeadSize / 2], sin);
        Value pos = c.B.Initializer(InMemoryTensor.FromInt64s("pos", [1, Seq], [0, 1, 2]));
        Value y = Op(c, "RotaryEmbedding", [x, cosCache, sinCache, pos], Attr.Int("num_heads", Heads));
        Verify("RotaryEmbedding (opset 23)", c, y, [1, Seq, Heads * HeadSize]);
    }
}
