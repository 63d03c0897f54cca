using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>Small hand-built graphs with one or two linear layers, named as torch exports name them.</summary>
internal static class TestGraphs
{
    public const int In = 8;
    public const int Out = 6;

    /// <summary>x [2,3,In] → MatMul W [In,Out] (optionally via Transpose of [Out,In]) → Add bias → y.</summary>
    public static Model MatMul(bool transposedWeight = false, bool withBias = true, int seed = 1)
    {
        var b = new GraphBuilder("matmul", 17);
        Value x = b.Input("x", DataType.Float, 2, 3, In);
        float[] w = LoraTestSupport.Random(In * Out, seed);
        Value weight = transposedWeight
            ? b.Transpose(b.Floats("model.layers.0.self_attn.q_proj.weight", [Out, In], LoraTestSupport.Transpose(w, In, Out)), [1, 0])
            : b.Floats("onnx::MatMul_7", [In, Out], w);
        Value y = b.MatMul(x, weight, "/model/layers.0/self_attn/q_proj/MatMul");
        if (withBias)
        {
            y = b.Add(y, b.Floats("model.layers.0.self_attn.q_proj.bias", [Out], LoraTestSupport.Random(Out, seed + 100)));
        }

        b.Output(y, "y", DataType.Float, 2, 3, Out);
        return b.Model;
    }

    /// <summary>x → Gemm(x or xᵀ, W or Wᵀ, C) → y, a 2-D linear layer with any transpose flags.</summary>
    public static Model Gemm(bool transA, bool transB, bool withBias = true, int seed = 2)
    {
        var b = new GraphBuilder("gemm", 17);
        Value x = transA ? b.Input("x", DataType.Float, In, 4) : b.Input("x", DataType.Float, 4, In);
        float[] w = LoraTestSupport.Random(In * Out, seed);
        Value weight = transB
            ? b.Floats("fc.weight", [Out, In], LoraTestSupport.Transpose(w, In, Out))
            : b.Floats("fc.weight", [In, Out], w);
        var inputs = withBias ? new Value?[] { x, weight, b.Floats("fc.bias", [Out], LoraTestSupport.Random(Out, seed + 1)) } : [x, weight];
        Value y = b.Op("Gemm", inputs, [Attr.Int("transA", transA ? 1 : 0), Attr.Int("transB", transB ? 1 : 0)], name: "/model/layers.1/mlp/fc1/Gemm");
        b.Output(y, "y", DataType.Float, 4, Out);
        return b.Model;
    }

    /// <summary>GenAI-builder style fused qkv: MatMul [In, 3·Out] then Split into q, k, v outputs.</summary>
    public static Model FusedQkv(int seed = 3)
    {
        var b = new GraphBuilder("qkv", 17);
        Value x = b.Input("x", DataType.Float, 1, 5, In);
        Value qkv = b.MatMul(x, b.Floats("model.layers.0.attn.qkv_proj.MatMul.weight", [In, 3 * Out], LoraTestSupport.Random(In * 3 * Out, seed)), "/model/layers.0/attn/qkv_proj/MatMul");
        IReadOnlyList<Value> parts = b.OpMulti("Split", [qkv, b.Int64s("split", Out, Out, Out)], 3, [Attr.Int("axis", -1)]);
        b.Output(parts[0], "q", DataType.Float, 1, 5, Out);
        b.Output(parts[1], "k", DataType.Float, 1, 5, Out);
        b.Output(parts[2], "v", DataType.Float, 1, 5, Out);
        return b.Model;
    }

    /// <summary>An fp16 MatMul layer (activation and weight fp16).</summary>
    public static Model MatMulFp16(int seed = 4)
    {
        var b = new GraphBuilder("fp16", 17);
        Value x = b.Input("x", DataType.Float16, 2, 3, In);
        float[] w = LoraTestSupport.Random(In * Out, seed);
        Value weight = b.Initializer(new InMemoryTensor("model.layers.0.mlp.up_proj.weight", DataType.Float16, [In, Out], TensorConvert.FromFloat32(w, DataType.Float16)));
        Value y = b.MatMul(x, weight, "/model/layers.0/mlp/up_proj/MatMul");
        b.Output(y, "y", DataType.Float16, 2, 3, Out);
        return b.Model;
    }
}

/// <summary>An int4 MatMulNBits layer built by the test's own quantizer, with its dequantized weight for reference.</summary>
internal static class NBitsGraph
{
    public const int K = 32;
    public const int N = 6;
    public const int BlockSize = 16;

    /// <summary>Builds x [1,4,K] → MatMulNBits → y and returns the model and W_eff [K, N] = dequant(B)ᵀ.</summary>
    public static (Model Model, float[] DequantizedInOut) Build(int seed = 5)
    {
        int blocks = K / BlockSize;
        var rng = new Random(seed);
        var q = new int[N * K];
        for (int i = 0; i < q.Length; i++)
        {
            q[i] = rng.Next(0, 16);
        }

        float[] scales = Enumerable.Range(0, N * blocks).Select(_ => (float)(0.01 + rng.NextDouble() * 0.05)).ToArray();

        // Packed [N, blocks, BlockSize/2]: two 4-bit values per byte, the even element in the low nibble.
        var packed = new byte[N * blocks * BlockSize / 2];
        for (int n = 0; n < N; n++)
        {
            for (int k = 0; k < K; k += 2)
            {
                packed[(n * K + k) / 2] = (byte)(q[n * K + k] | (q[n * K + k + 1] << 4));
            }
        }

        // Without zero points MatMulNBits uses 8 (= 2^(bits-1)).
        var w = new float[K * N];
        for (int n = 0; n < N; n++)
        {
            for (int k = 0; k < K; k++)
            {
                w[k * N + n] = (q[n * K + k] - 8) * scales[n * blocks + k / BlockSize];
            }
        }

        var b = new GraphBuilder("nbits", 17);
        b.Model.OpsetImports["com.microsoft"] = 1;
        Value x = b.Input("x", DataType.Float, 1, 4, K);
        Value bq = b.Initializer(new InMemoryTensor("model.layers.0.mlp.down_proj.MatMul.weight_Q4", DataType.UInt8, [N, blocks, BlockSize / 2], packed));
        Value sc = b.Floats("model.layers.0.mlp.down_proj.MatMul.weight_scales", [N * blocks], scales);
        Value y = b.Op("MatMulNBits", [x, bq, sc], [Attr.Int("K", K), Attr.Int("N", N), Attr.Int("bits", 4), Attr.Int("block_size", BlockSize)], "com.microsoft", "/model/layers.0/mlp/down_proj/MatMulNBits");
        b.Output(y, "y", DataType.Float, 1, 4, N);
        return (b.Model, w);
    }

    /// <summary>The same layer as a plain fp32 MatMul with weight <paramref name="inOut"/> [K, N].</summary>
    public static Model AsMatMul(float[] inOut)
    {
        var b = new GraphBuilder("nbits_reference", 17);
        Value x = b.Input("x", DataType.Float, 1, 4, K);
        b.Output(b.MatMul(x, b.Floats("w", [K, N], inOut)), "y", DataType.Float, 1, 4, N);
        return b.Model;
    }
}
