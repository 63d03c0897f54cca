using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Finite-difference checks of the com.microsoft Attention rule (GPT-2's fused qkv attention from ORT's transformers
/// optimizer), with ORT's own Attention kernel as the forward: gradients w.r.t. the input, the packed qkv weight and
/// its bias, for each mask form the rule supports. The op is float32-only in ORT's CPU build: h = 1e-2, relative error
/// ≤ 5e-3 (the float32 bound of RuleGradientTests).
/// </summary>
[TestClass]
public sealed class FusedAttentionGradientTests
{
    [TestMethod]
    [DataRow(0, 1, DisplayName = "no mask, unidirectional")]
    [DataRow(2, 1, DisplayName = "raw 2-D mask, unidirectional")]
    [DataRow(2, 0, DisplayName = "raw 2-D mask, bidirectional")]
    [DataRow(3, 0, DisplayName = "3-D mask, bidirectional")]
    public void Attention_PackedQkvWithMask_MatchesFiniteDifferences(int maskRank, int unidirectional)
    {
        const int Batch = 2, Seq = 4, Hidden = 6, In = 5;
        var c = new GradCheck(DataType.Float, opset: 13, seed: 31 + maskRank);
        Value x = c.Param("x", [Batch, Seq, In]);
        Value w = c.Param("w", [In, 3 * Hidden]);
        Value bias = c.Param("bias", [3 * Hidden]);
        Value? mask = null;
        if (maskRank > 0)
        {
            // Right padding of row 1 (its last key masked), so no query row has every key masked.
            (long[] data, long[] dims) = maskRank switch
            {
                2 => (new long[] { 1, 1, 1, 1, 1, 1, 1, 0 }, new long[] { Batch, Seq }),
                _ => (Enumerable.Range(0, Batch * Seq * Seq).Select(i => i % Seq == 3 && i >= Seq * Seq ? 0L : 1L).ToArray(), new long[] { Batch, Seq, Seq }),
            };
            Value raw = c.IntInput("mask", dims.Select(d => (Dim)d).ToArray(), data, dims);
            mask = c.B.Cast(raw, DataType.Int32);
        }

        c.B.Model.RequireOpset("com.microsoft", 1);
        Value y = c.B.Op("Attention", [x, w, bias, mask], [Attr.Int("num_heads", 2), Attr.Int("unidirectional", unidirectional)], "com.microsoft");
        double err = c.Check(y, [Batch, Seq, Hidden], 1e-2);
        Console.WriteLine($"GRADCHECK | Attention mask rank {maskRank} unidirectional {unidirectional} | float32 | {err:E2}");
        Assert.IsLessThan(5e-3, err);
    }
}
