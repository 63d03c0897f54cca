using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// One finite-difference check per gradient rule (see <see cref="GradCheck"/>). Float64 graphs use a step of 1e-5
/// and must agree to 1e-6 relative; ops that ORT's CPU build registers for float32 only use a step of 1e-2 and must
/// agree to 5e-3 relative (fp32 rounding of the loss divided by the step, plus O(h²) truncation).
/// </summary>
[TestClass]
public sealed class RuleGradientTests
{
    private const double DoubleStep = 1e-5;
    private const double DoubleTolerance = 1e-6;
    private const double FloatStep = 1e-2;
    private const double FloatTolerance = 5e-3;

    private static void Verify(string op, GradCheck c, Value y, long[]? dims)
    {
        bool isDouble = c.Type == DataType.Double;
        double err = c.Check(y, dims, isDouble ? DoubleStep : FloatStep);
        Console.WriteLine($"GRADCHECK | {op} | {(isDouble ? "float64" : "float32")} | {err:E2}");
        Assert.IsLessThan(isDouble ? DoubleTolerance : FloatTolerance, err, $"{op}: max relative error {err:E3}");
    }

    private static Value Op(GradCheck c, string op, Value?[] inputs, params Attr[] attrs) => c.B.Op(op, inputs, attrs);

    private static Value MsOp(GradCheck c, string op, Value?[] inputs, params Attr[] attrs)
    {
        c.B.Model.RequireOpset("com.microsoft", 1);
        return c.B.Op(op, inputs, attrs, "com.microsoft");
    }

    [TestMethod]
    public void MatMul_ActivationTimesWeight_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 4]);
        Value w = c.Param("w", [4, 5]);
        Verify("MatMul (3-D x 2-D)", c, c.B.MatMul(x, w), [2, 3, 5]);
    }

    [TestMethod]
    public void MatMul_BatchedWithBroadcast_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value a = c.Param("a", [2, 1, 3, 4]);
        Value b = c.Param("b", [3, 4, 2]);
        Verify("MatMul (batched, broadcast)", c, c.B.MatMul(a, b), [2, 3, 3, 2]);
    }

    [TestMethod]
    public void MatMul_Float32FusedMatMulPath_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value a = c.Param("a", [2, 3, 4]);
        Value b = c.Param("b", [2, 4, 3]);
        Verify("MatMul (fp32, FusedMatMul)", c, c.B.MatMul(a, b), [2, 3, 3]);
    }

    [TestMethod]
    public void MatMul_SymbolicBatchAndSequence_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Input("x", ["batch", "seq", 4], [2, 3, 4]);
        Value w = c.Param("w", [4, 3]);
        Value bias = c.Param("bias", [3]);
        Verify("MatMul+Add (symbolic dims)", c, c.B.Add(c.B.MatMul(x, w), bias), null);
    }

    [TestMethod]
    [DataRow(0, 0)]
    [DataRow(1, 0)]
    [DataRow(0, 1)]
    [DataRow(1, 1)]
    public void Gemm_TransposeFlags_MatchesFiniteDifferences(int transA, int transB)
    {
        var c = new GradCheck();
        Value a = c.Param("a", transA == 1 ? [4, 3] : [3, 4]);
        Value b = c.Param("b", transB == 1 ? [5, 4] : [4, 5]);
        Value bias = c.Param("c", [5]);
        Value y = Op(c, "Gemm", [a, b, bias], Attr.Int("transA", transA), Attr.Int("transB", transB), Attr.Float("alpha", 0.7f), Attr.Float("beta", 1.3f));
        Verify($"Gemm (transA={transA}, transB={transB})", c, y, [3, 5]);
    }

    [TestMethod]
    [DataRow("Add")]
    [DataRow("Sub")]
    [DataRow("Mul")]
    [DataRow("Div")]
    public void Binary_WithBroadcast_MatchesFiniteDifferences(string op)
    {
        var c = new GradCheck();
        Value a = c.Param("a", [2, 3, 4], 0.5, 1.5);
        Value b = c.Param("b", [3, 1], 0.5, 1.5);
        Verify(op + " (broadcast)", c, Op(c, op, [a, b]), [2, 3, 4]);
    }

    [TestMethod]
    public void Pow_ConstantAndLearnedExponent_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value a = c.Param("a", [3, 4], 0.5, 1.5);
        Value e = c.Param("e", [4], 0.5, 2.5);
        Value squared = Op(c, "Pow", [a, c.Scalar("two", 2.0)]);
        Verify("Pow", c, c.B.Add(squared, Op(c, "Pow", [a, e])), [3, 4]);
    }

    [TestMethod]
    [DataRow("Neg", -1.0, 1.0)]
    [DataRow("Sqrt", 0.5, 2.0)]
    [DataRow("Reciprocal", 0.5, 2.0)]
    [DataRow("Exp", -1.0, 1.0)]
    [DataRow("Log", 0.5, 2.0)]
    [DataRow("Tanh", -2.0, 2.0)]
    [DataRow("Sigmoid", -2.0, 2.0)]
    [DataRow("Relu", -1.0, 1.0)]
    [DataRow("Identity", -1.0, 1.0)]
    public void Unary_MatchesFiniteDifferences(string op, double lo, double hi)
    {
        var c = new GradCheck();
        Value x = c.Param("x", [3, 5], lo, hi);
        Verify(op, c, Op(c, op, [x]), [3, 5]);
    }

    [TestMethod]
    public void Erf_Float32_MatchesFiniteDifferences()
    {
        // ORT's CPU Erf kernel is float32 only.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -1.5, 1.5);
        Verify("Erf", c, Op(c, "Erf", [x]), [3, 5]);
    }

    [TestMethod]
    [DataRow("Softmax")]
    [DataRow("LogSoftmax")]
    public void Softmax_LastAndMiddleAxis_MatchesFiniteDifferences(string op)
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 4], -2, 2);
        Value y = c.B.Add(Op(c, op, [x], Attr.Int("axis", -1)), Op(c, op, [x], Attr.Int("axis", 1)));
        Verify(op, c, y, [2, 3, 4]);
    }

    [TestMethod]
    [DataRow("ReduceSum", 17L, 1L)]
    [DataRow("ReduceSum", 17L, 0L)]
    [DataRow("ReduceSum", 11L, 0L)]
    [DataRow("ReduceMean", 17L, 1L)]
    [DataRow("ReduceMean", 17L, 0L)]
    [DataRow("ReduceMean", 18L, 0L)]
    public void Reduce_AttributeAndInputAxes_MatchesFiniteDifferences(string op, long opset, long keepDims)
    {
        var c = new GradCheck(DataType.Double, opset);
        Value x = c.Param("x", [2, 3, 4]);
        bool axesAsInput = op == "ReduceSum" ? opset >= 13 : opset >= 18;
        Value y = axesAsInput
            ? Op(c, op, [x, c.B.Int64s("axes", 1, -1)], Attr.Int("keepdims", keepDims))
            : Op(c, op, [x], Attr.Ints("axes", 1, -1), Attr.Int("keepdims", keepDims));
        Verify($"{op} (opset {opset}, keepdims={keepDims})", c, y, keepDims == 1 ? [2, 1, 1] : [2]);
    }

    [TestMethod]
    public void ReshapeTransposeSqueezeUnsqueeze_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 4]);
        Value r = c.B.Reshape(x, [6, 4]);
        Value t = c.B.Transpose(r, [1, 0]);
        Value u = Op(c, "Unsqueeze", [t, c.B.Int64s("ax", 0)]);
        Value s = Op(c, "Squeeze", [Op(c, "Transpose", [u], Attr.Ints("perm", 1, 0, 2)), c.B.Int64s("ax1", 1)]);
        Verify("Reshape/Transpose/Squeeze/Unsqueeze", c, s, [4, 6]);
    }

    [TestMethod]
    public void Slice_WithStepsAndNegativeBounds_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [4, 6]);
        Value y = Op(c, "Slice", [x, c.B.Int64s("starts", 1, -1), c.B.Int64s("ends", 4, 0), c.B.Int64s("axes", 0, 1), c.B.Int64s("steps", 1, -2)]);
        Verify("Slice", c, y, [3, 3]);
    }

    [TestMethod]
    public void Slice_ContiguousFromBothEnds_PadPathMatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [4, 6]);
        Value y = Op(c, "Slice", [x, c.B.Int64s("starts", 1, 2), c.B.Int64s("ends", -1, long.MaxValue), c.B.Int64s("axes", 0, -1)]);
        Verify("Slice (pad path)", c, c.B.Mul(y, y), [2, 4]);
    }

    [TestMethod]
    public void Broadcast_SymbolicDimsAgainstOnesAndMissingAxes_MatchesFiniteDifferences()
    {
        // Static un-broadcast with symbolic batch/seq: a fixed 1 against a symbol (w, mean), and a missing leading
        // axis of a symbolically shaped value (rows), which is summed and squeezed without run-time shapes.
        var c = new GradCheck();
        Value x = c.Input("x", ["batch", "seq", 4], [2, 3, 4]);
        Value w = c.Param("w", [1, 1, 4]);
        Value u = c.B.Mul(x, w);
        Value rows = Op(c, "ReduceSum", [u, c.B.Int64s("axis0", 0)], Attr.Int("keepdims", 0));
        Value mean = Op(c, "ReduceMean", [u], Attr.Ints("axes", 1), Attr.Int("keepdims", 1));
        Value y = c.B.Add(c.B.Mul(u, rows), c.B.Mul(u, mean));
        Verify("Mul/Add (symbolic broadcast)", c, y, null);
    }

    [TestMethod]
    public void Broadcast_BetweenDifferentSymbols_RunTimeAxesMatchFiniteDifferences()
    {
        // "b2" is 1 at run time and "batch" is 2: which axis was broadcast is only known when the graph runs, so the
        // gradient of v sums over axes found from run-time shapes.
        var c = new GradCheck();
        Value x1 = c.Input("x1", ["batch", "seq", 4], [2, 3, 4]);
        Value x2 = c.Input("x2", ["b2", "seq", 4], [1, 3, 4]);
        Value w = c.Param("w", [4]);
        Value v = c.B.Mul(x2, c.Param("p", [4]));
        Verify("Add (run-time broadcast axes)", c, c.B.Add(c.B.Mul(x1, w), v), null);
    }

    [TestMethod]
    public void ConcatAndSplit_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value a = c.Param("a", [2, 3]);
        Value b = c.Param("b", [2, 2]);
        Value cat = Op(c, "Concat", [a, b], Attr.Int("axis", 1));
        IReadOnlyList<Value> parts = c.B.OpMulti("Split", [cat, c.B.Int64s("split", 1, 4)], 2, [Attr.Int("axis", 1)]);
        // Only the second part reaches the loss: the first part's gradient must be zeros.
        Verify("Concat+Split", c, c.B.Mul(parts[1], parts[1]), [2, 4]);
    }

    [TestMethod]
    public void Gather_RepeatedAndNegativeIndices_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value table = c.Param("table", [5, 3]);
        Value idx = c.B.Initializer(InMemoryTensor.FromInt64s("idx", [2, 3], [0, 2, 2, -1, 0, 4]));
        Value y = Op(c, "Gather", [table, idx], Attr.Int("axis", 0));
        Value z = Op(c, "Gather", [table, c.B.Int64s("cols", 2, 0)], Attr.Int("axis", 1));
        Value both = Op(c, "Concat", [c.B.Reshape(y, [18]), c.B.Reshape(z, [10])], Attr.Int("axis", 0));
        Verify("Gather (axis 0 and 1)", c, both, [28]);
    }

    [TestMethod]
    public void ExpandAndWhere_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [3, 1]);
        Value other = c.Param("o", [4]);
        Value e = Op(c, "Expand", [x, c.B.Int64s("shape", 2, 3, 4)]);
        Value cond = c.B.Initializer(InMemoryTensor.From("cond", DataType.Bool, [3, 4], Enumerable.Range(0, 12).Select(i => (byte)(i % 3 == 0 ? 1 : 0)).ToArray().AsSpan()));
        Verify("Expand+Where", c, Op(c, "Where", [cond, e, other]), [2, 3, 4]);
    }

    [TestMethod]
    public void CastAndDropout_MatchesFiniteDifferences()
    {
        // float32 parameters computed on in float64 and cast back: the gradient must be cast back too.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 4]);
        Value f = c.B.Cast(x, DataType.Double);
        Value d = Op(c, "Dropout", [f, c.B.Initializer(InMemoryTensor.From("ratio", DataType.Double, [], [0.3]))]);
        Verify("Cast+Dropout(inference)", c, c.B.Cast(c.B.Mul(d, d), DataType.Float), [3, 4]);
    }

    [TestMethod]
    public void LayerNormalization_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Value b = c.Param("beta", [6]);
        Verify("LayerNormalization", c, Op(c, "LayerNormalization", [x, g, b], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
    public void SimplifiedLayerNormalization_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Verify("SimplifiedLayerNormalization", c, Op(c, "SimplifiedLayerNormalization", [x, g], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
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
    public void RmsNormalization_Opset23_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Double, 23);
        Value x = c.Param("x", [2, 3, 6]);
        Value g = c.Param("gamma", [6]);
        Verify("RMSNormalization", c, Op(c, "RMSNormalization", [x, g], Attr.Int("axis", -1), Attr.Float("epsilon", 1e-5f)), [2, 3, 6]);
    }

    [TestMethod]
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
    public void FastGelu_WithBias_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -2, 2);
        Value bias = c.Param("bias", [5]);
        Verify("FastGelu", c, MsOp(c, "FastGelu", [x, bias]), [3, 5]);
    }

    [TestMethod]
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
}
