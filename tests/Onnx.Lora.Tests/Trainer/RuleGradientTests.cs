using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// One finite-difference check per gradient rule (see <see cref="GradCheck"/>). Float64 graphs use a step of 1e-5
/// and must agree to 1e-6 relative; ops that ORT's CPU build registers for float32 only use a step of 1e-2 and must
/// agree to 5e-3 relative (fp32 rounding of the loss divided by the step, plus O(h²) truncation).
/// </summary>
[TestClass]
public sealed partial class RuleGradientTests
{
    private const double DoubleStep = 1e-5;
    private const double DoubleTolerance = 1e-6;
    private const double FloatStep = 1e-2;
    private const double FloatTolerance = 5e-3;
    private const string Ms = "com.microsoft";

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
    [ChecksGradientOf("MatMul")]
    public void MatMul_ActivationTimesWeight_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 4]);
        Value w = c.Param("w", [4, 5]);
        Verify("MatMul (3-D x 2-D)", c, c.B.MatMul(x, w), [2, 3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("MatMul")]
    public void MatMul_BatchedWithBroadcast_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value a = c.Param("a", [2, 1, 3, 4]);
        Value b = c.Param("b", [3, 4, 2]);
        Verify("MatMul (batched, broadcast)", c, c.B.MatMul(a, b), [2, 3, 3, 2]);
    }

    [TestMethod]
    [ChecksGradientOf("MatMul")]
    public void MatMul_Float32FusedMatMulPath_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value a = c.Param("a", [2, 3, 4]);
        Value b = c.Param("b", [2, 4, 3]);
        Verify("MatMul (fp32, FusedMatMul)", c, c.B.MatMul(a, b), [2, 3, 3]);
    }

    [TestMethod]
    [ChecksGradientOf("MatMul", "Add")]
    public void MatMul_SymbolicBatchAndSequence_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Input("x", ["batch", "seq", 4], [2, 3, 4]);
        Value w = c.Param("w", [4, 3]);
        Value bias = c.Param("bias", [3]);
        Verify("MatMul+Add (symbolic dims)", c, c.B.Add(c.B.MatMul(x, w), bias), null);
    }

    [TestMethod]
    [ChecksGradientOf("Gemm")]
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
    [ChecksGradientOf("Add", "Sub", "Mul", "Div")]
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
    [ChecksGradientOf("Pow")]
    public void Pow_ConstantAndLearnedExponent_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value a = c.Param("a", [3, 4], 0.5, 1.5);
        Value e = c.Param("e", [4], 0.5, 2.5);
        Value squared = Op(c, "Pow", [a, c.Scalar("two", 2.0)]);
        Verify("Pow", c, c.B.Add(squared, Op(c, "Pow", [a, e])), [3, 4]);
    }

    [TestMethod]
    [ChecksGradientOf("Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Tanh", "Sigmoid", "Relu", "Identity")]
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
    [ChecksGradientOf("Erf")]
    public void Erf_Float32_MatchesFiniteDifferences()
    {
        // ORT's CPU Erf kernel is float32 only.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 5], -1.5, 1.5);
        Verify("Erf", c, Op(c, "Erf", [x]), [3, 5]);
    }

    [TestMethod]
    [ChecksGradientOf("Softmax", "LogSoftmax")]
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
    [ChecksGradientOf("ReduceSum", "ReduceMean")]
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
    [ChecksGradientOf("Reshape", "Transpose", "Squeeze", "Unsqueeze")]
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
    [ChecksGradientOf("Slice")]
    public void Slice_WithStepsAndNegativeBounds_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [4, 6]);
        Value y = Op(c, "Slice", [x, c.B.Int64s("starts", 1, -1), c.B.Int64s("ends", 4, 0), c.B.Int64s("axes", 0, 1), c.B.Int64s("steps", 1, -2)]);
        Verify("Slice", c, y, [3, 3]);
    }

    [TestMethod]
    [ChecksGradientOf("Slice")]
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
    [ChecksGradientOf("Concat", "Split")]
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
    [ChecksGradientOf("Gather")]
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
    [ChecksGradientOf("Expand", "Where")]
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
    [ChecksGradientOf("Cast", "Dropout")]
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
    [ChecksGradientOf("Flatten")]
    public void Flatten_MatchesFiniteDifferences()
    {
        var c = new GradCheck();
        Value x = c.Param("x", [2, 3, 4]);
        Verify("Flatten", c, Op(c, "Flatten", [x], Attr.Int("axis", 2)), [6, 4]);
    }

    [TestMethod]
    [ChecksGradientOf("CastLike")]
    public void CastLike_ThereAndBack_MatchesFiniteDifferences()
    {
        // The second CastLike takes the trainable x as its type template: that input has no gradient and is cut.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [3, 4]);
        Value template = c.B.Initializer(InMemoryTensor.From("double_template", DataType.Double, [], [0.0]));
        Value d = Op(c, "CastLike", [x, template]);
        Verify("CastLike", c, Op(c, "CastLike", [c.B.Mul(d, d), x]), [3, 4]);
    }
}
