using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// Y = A·B (batched, broadcasting): dA = unbroadcast(dY·Bᵀ), dB = unbroadcast(Aᵀ·dY). For the common 2-D weight B
/// the weight gradient is one GEMM over the flattened batch: dB = reshape(A, [-1, K])ᵀ · reshape(dY, [-1, N]).
/// Transposes of the last two axes use com.microsoft FusedMatMul (registered by the inference build) for float32,
/// which avoids materialising a transposed copy; other types use Transpose, which needs the rank.
/// </summary>
public sealed class MatMulGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["MatMul"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Value a = step.Input(0);
        Value b = step.Input(1);
        Value dy = step.OutputGradient(0)!;
        int? rankA = context.RankOf(a);
        int? rankB = context.RankOf(b);
        if (rankA == 1 || rankB == 1)
        {
            throw new LoraException($"MatMul '{step.Node.Name}' has a 1-D operand; its gradient is not supported.");
        }

        if (step.NeedsGradient(0))
        {
            Value da = MatMulTransposed(context, dy, b, transA: false, transB: true, rankB);
            // With a 2-D B, dY·Bᵀ already has A's shape; otherwise A may have been broadcast over batch axes.
            step.SetInputGradient(0, rankB == 2 && rankA is not null ? da : context.Unbroadcast(da, a));
        }

        if (step.NeedsGradient(1))
        {
            if (rankB == 2)
            {
                Value k = KeepDim(context, b, 0);
                Value n = KeepDim(context, b, 1);
                Value a2 = rankA == 2 ? a : context.Op("Reshape", [a, Concat(context, context.Ints(-1), k)]);
                Value dy2 = rankA == 2 ? dy : context.Op("Reshape", [dy, Concat(context, context.Ints(-1), n)]);
                step.SetInputGradient(1, MatMulTransposed(context, a2, dy2, transA: true, transB: false, 2));
            }
            else
            {
                Value db = MatMulTransposed(context, a, dy, transA: true, transB: false, rankA);
                step.SetInputGradient(1, context.Unbroadcast(db, b));
            }
        }
    }

    /// <summary>op(X)·op(Y) where op transposes the last two axes.</summary>
    internal static Value MatMulTransposed(GradientContext context, Value x, Value y, bool transA, bool transB, int? rankOfTransposed)
    {
        DataType type = context.TypeOf(x);
        if (type == DataType.Float || (type == DataType.Undefined && rankOfTransposed is null))
        {
            return context.MsOp("FusedMatMul", [x, y], Attr.Int("transA", transA ? 1 : 0), Attr.Int("transB", transB ? 1 : 0), Attr.Float("alpha", 1f));
        }

        if ((rankOfTransposed ?? context.RankOf(transA ? x : y)) is null)
        {
            // Unknown rank: Einsum's ellipsis broadcasts batch axes without knowing how many there are.
            string equation = (transA, transB) switch
            {
                (true, false) => "...ji,...jk->...ik",
                (false, true) => "...ij,...kj->...ik",
                (true, true) => "...ji,...kj->...ik",
                _ => "...ij,...jk->...ik",
            };
            return context.Op("Einsum", [x, y], Attr.String("equation", equation));
        }

        Value left = transA ? SwapLastTwo(context, x, rankOfTransposed) : x;
        Value right = transB ? SwapLastTwo(context, y, rankOfTransposed) : y;
        return context.Op("MatMul", [left, right]);
    }

    private static Value SwapLastTwo(GradientContext context, Value x, int? rank)
    {
        int r = rank ?? context.RankOf(x) ?? throw new LoraException($"The rank of '{x.Name}' is unknown; its MatMul gradient (non-float32) needs it.");
        long[] perm = Enumerable.Range(0, r).Select(i => (long)i).ToArray();
        (perm[r - 1], perm[r - 2]) = (perm[r - 2], perm[r - 1]);
        return context.Op("Transpose", [x], Attr.Ints("perm", perm));
    }

    private static Value KeepDim(GradientContext context, Value w, int axis)
    {
        Dim[]? shape = context.ShapeOf(w);
        return shape is not null && shape[axis].IsFixed
            ? context.Ints(shape[axis].Value!.Value)
            : context.Op("Gather", [context.ShapeOfValue(w), context.Ints(axis)]);
    }

    private static Value Concat(GradientContext context, Value first, Value second) =>
        first.Initializer is not null && second.Initializer is not null
            ? context.Ints([.. first.Initializer.ToArray<long>(), .. second.Initializer.ToArray<long>()])
            : context.Op("Concat", [first, second], Attr.Int("axis", 0));
}

/// <summary>
/// Y = α·op(A)·op(B) + β·C (2-D). With op the optional transposes: dA = α·dY·op(B)ᵀ (or its transpose),
/// dB = α·op(A)ᵀ·dY (or its transpose), dC = β·unbroadcast(dY). Each is one Gemm with adjusted trans flags.
/// </summary>
public sealed class GemmGradient : GradientRule
{
    /// <inheritdoc />
    public override IReadOnlyList<string> OpTypes => ["Gemm"];

    /// <inheritdoc />
    public override void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        bool transA = node.GetInt("transA", 0) != 0;
        bool transB = node.GetInt("transB", 0) != 0;
        float alpha = node.GetFloat("alpha", 1f);
        float beta = node.GetFloat("beta", 1f);
        Value a = step.Input(0);
        Value b = step.Input(1);
        Value dy = step.OutputGradient(0)!;
        if (step.NeedsGradient(0))
        {
            // transA = 0: dA = dY·op(B)ᵀ; transA = 1: dA = op(B)·dYᵀ.
            Value da = transA
                ? Gemm(context, b, dy, transB, true, alpha)
                : Gemm(context, dy, b, false, !transB, alpha);
            step.SetInputGradient(0, da);
        }

        if (step.NeedsGradient(1))
        {
            // transB = 0: dB = op(A)ᵀ·dY; transB = 1: dB = dYᵀ·op(A).
            Value db = transB
                ? Gemm(context, dy, a, true, transA, alpha)
                : Gemm(context, a, dy, !transA, false, alpha);
            step.SetInputGradient(1, db);
        }

        if (step.NeedsGradient(2))
        {
            Value dc = beta == 1f ? dy : context.Mul(dy, context.Scalar(beta, dy));
            step.SetInputGradient(2, context.Unbroadcast(dc, step.Input(2), step.Output(0)));
        }
    }

    private static Value Gemm(GradientContext context, Value x, Value y, bool transA, bool transB, float alpha) =>
        context.Op("Gemm", [x, y], Attr.Int("transA", transA ? 1 : 0), Attr.Int("transB", transB ? 1 : 0), Attr.Float("alpha", alpha));
}
