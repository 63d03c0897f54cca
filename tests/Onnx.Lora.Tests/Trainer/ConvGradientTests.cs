using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Finite-difference checks of the Conv rule (input, weight and bias gradients) in the shapes LoRA on Conv uses:
/// k×k with stride, padding and dilation (A), 1×1 (B), 1-D. ORT's CPU Conv is float32 only, so the float32 step and
/// tolerance of <see cref="RuleGradientTests"/> apply (step 1e-2, 5e-3 relative).
/// </summary>
[TestClass]
public sealed class ConvGradientTests
{
    private const double FloatStep = 1e-2;
    private const double FloatTolerance = 5e-3;

    private static void Verify(string what, GradCheck c, Value y, long[] dims)
    {
        double err = c.Check(y, dims, FloatStep);
        Console.WriteLine($"GRADCHECK | {what} | float32 | {err:E2}");
        Assert.IsLessThan(FloatTolerance, err, $"{what}: max relative error {err:E3}");
    }

    [TestMethod]
    [DataRow(1, 1, 1, 6, DisplayName = "3x3 stride 1 pad 1")]
    [DataRow(2, 1, 1, 3, DisplayName = "3x3 stride 2 pad 1 (stride remainder)")]
    [DataRow(2, 0, 2, 1, DisplayName = "3x3 stride 2 dilation 2 no pad")]
    public void Conv2d_InputWeightAndBias_MatchFiniteDifferences(int stride, int pad, int dilation, int outSize)
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [2, 3, 6, 6]);
        Value w = c.Param("w", [4, 3, 3, 3]);
        Value b = c.Param("b", [4]);
        Value y = c.B.Op("Conv", [x, w, b], [Attr.Ints("strides", stride, stride), Attr.Ints("pads", pad, pad, pad, pad), Attr.Ints("dilations", dilation, dilation)]);
        Verify($"Conv2d s{stride} p{pad} d{dilation}", c, y, [2, 4, outSize, outSize]);
    }

    [TestMethod]
    public void Conv_PointwiseAfterDynamicWeight_MatchesFiniteDifferences()
    {
        // LoRA's B: a 1×1 Conv whose weight is a Reshape of a [r, out] parameter, applied to a k×k Conv's output.
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [1, 2, 5, 5]);
        Value a = c.Param("a", [3, 2, 3, 3]);
        Value bFlat = c.Param("b_flat", [3, 4]);
        Value mid = c.B.Op("Conv", [x, a], [Attr.Ints("pads", 1, 1, 1, 1)]);
        Value bConv = c.B.Reshape(c.B.Transpose(bFlat, [1, 0]), [4, 3, 1, 1]);
        Verify("Conv 1x1 after 3x3", c, c.B.Op("Conv", [mid, bConv]), [1, 4, 5, 5]);
    }

    [TestMethod]
    public void Conv1d_StrideRemainder_MatchesFiniteDifferences()
    {
        var c = new GradCheck(DataType.Float);
        Value x = c.Param("x", [2, 2, 7]);
        Value w = c.Param("w", [3, 2, 2]);
        Verify("Conv1d s3", c, c.B.Op("Conv", [x, w], [Attr.Ints("strides", 3)]), [2, 3, 2]);
    }
}
