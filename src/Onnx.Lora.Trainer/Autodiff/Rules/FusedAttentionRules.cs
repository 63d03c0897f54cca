using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// com.microsoft Attention(input, weights, bias?, mask_index?, past?, attention_bias?) from ORT's transformers optimizer
/// (GPT-2 / BERT): the qkv projection happens inside the op. Recomputed in standard ops without a past (the training
/// graph has none): QKV = X·W + b split into Q | K | V (by qkv_hidden_sizes, else thirds), heads of size D, and, as
/// ORT's CPU kernel does, ADDITIVE masks: S = scale·QKᵀ + attention_bias + f·[key masked] + f·[key after query when
/// unidirectional], f = mask_filter_value (−10000 by default), P = softmax(S), O = PV. mask_index forms: raw 2-D
/// [B, T] (0 = masked) and 3-D [B, S, T] (what GPT-2 / BERT exports feed); the 1-D / 2·B index forms are refused.
/// Backward: dS = P ∘ (dP − rowsum(dP ∘ P)), dQ = scale·dS·K, dK = scale·dSᵀ·Q, dV = Pᵀ·dO, dQKV = [dQ | dK | dV];
/// dX = dQKV·Wᵀ, dW = Xᵀ·dQKV (summed over batch and sequence), db = Σ dQKV.
/// </summary>
public sealed class AttentionGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["Attention"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        if (step.OptionalInput(4) is not null || step.OptionalInput(6) is not null)
        {
            throw new LoraException($"Attention '{node.Name}' still reads a past; training graphs must have the KV cache removed.");
        }

        if (node.GetInt("do_rotary", 0) != 0)
        {
            throw new LoraException($"Attention '{node.Name}' uses do_rotary; its gradient is not supported.");
        }

        if (step.NeedsGradient(3) || step.NeedsGradient(5))
        {
            throw new LoraException($"Attention '{node.Name}': its mask or attention_bias depends on a trainable tensor; that gradient is not supported.");
        }

        Value dO = step.OutputGradient(0) ?? throw new LoraException($"Only the output of Attention '{node.Name}' can be differentiated.");
        long heads = node.GetInt("num_heads", 0);
        Value x = step.Input(0);
        Value w = step.Input(1);
        Value? bias = step.OptionalInput(2);
        long[] sizes = node.GetAttribute("qkv_hidden_sizes")?.AsInts().ToArray() ?? [];

        Value qkv = context.Op("MatMul", [x, w]);
        if (bias is not null)
        {
            qkv = context.Add(qkv, bias);
        }

        Value q, k, v;
        if (sizes.Length == 3)
        {
            IReadOnlyList<Value> parts = context.Builder.OpMulti("Split", [qkv, context.Ints(sizes)], 3, [Attr.Int("axis", -1)]);
            (q, k, v) = (parts[0], parts[1], parts[2]);
        }
        else
        {
            // Equal thirds: Split without sizes (opset 18 also wants num_outputs).
            Attr[] attrs = context.Opset >= 18 ? [Attr.Int("axis", -1), Attr.Int("num_outputs", 3)] : [Attr.Int("axis", -1)];
            IReadOnlyList<Value> parts = context.Builder.OpMulti("Split", [qkv], 3, attrs);
            (q, k, v) = (parts[0], parts[1], parts[2]);
        }

        Value qh = GroupQueryAttentionGradient.Heads(context, q, heads);
        Value kh = GroupQueryAttentionGradient.Heads(context, k, heads);
        Value vh = GroupQueryAttentionGradient.Heads(context, v, heads);
        float scaleAttr = node.GetFloat("scale", 0f);
        Value scale = scaleAttr != 0f
            ? context.Scalar(scaleAttr, x)
            : context.Op("Reciprocal", [context.Op("Sqrt", [context.Op("Cast", [context.Op("Gather", [context.ShapeOfValue(qh), context.Ints(3)])], Attr.Int("to", (long)FloatType(context, x)))])]);
        Value scores = context.Mul(context.Op("MatMul", [qh, context.Op("Transpose", [kh], Attr.Ints("perm", 0, 1, 3, 2))]), scale);
        if (step.OptionalInput(5) is { } attentionBias)
        {
            scores = context.Add(scores, attentionBias);
        }

        Value filter = context.Scalar(node.GetFloat("mask_filter_value", -10000f), x);
        Value shape = context.ShapeOfValue(scores);
        if (step.OptionalInput(3) is { } mask)
        {
            scores = context.Add(scores, context.Mul(KeyMasked(context, node, mask, x), filter));
        }

        if (node.GetInt("unidirectional", 0) != 0)
        {
            Value cols = context.Op("Range", [context.Scalar(0, DataType.Int64), context.Op("Squeeze", [context.Op("Gather", [shape, context.Ints(3)]), context.Ints(0)]), context.Scalar(1, DataType.Int64)]);
            Value rows = context.Op("Range", [context.Scalar(0, DataType.Int64), context.Op("Squeeze", [context.Op("Gather", [shape, context.Ints(2)]), context.Ints(0)]), context.Scalar(1, DataType.Int64)]);
            Value causal = context.Op("Cast", [context.Op("Less", [context.Unsqueeze(rows, [1]), context.Unsqueeze(cols, [0])])], Attr.Int("to", (long)FloatType(context, x)));
            scores = context.Add(scores, context.Mul(causal, filter));
        }

        Value p = context.Op("Softmax", [scores], Attr.Int("axis", -1));
        Value dOh = GroupQueryAttentionGradient.Heads(context, dO, heads);
        Value dV = context.Op("MatMul", [context.Op("Transpose", [p], Attr.Ints("perm", 0, 1, 3, 2)), dOh]);
        Value dP = context.Op("MatMul", [dOh, context.Op("Transpose", [vh], Attr.Ints("perm", 0, 1, 3, 2))]);
        Value dS = context.Mul(p, context.Sub(dP, context.ReduceSum(context.Mul(dP, p), [-1], keepDims: true)));
        Value dQ = GroupQueryAttentionGradient.Merge(context, context.Mul(context.Op("MatMul", [dS, kh]), scale));
        Value dK = GroupQueryAttentionGradient.Merge(context, context.Mul(context.Op("MatMul", [context.Op("Transpose", [dS], Attr.Ints("perm", 0, 1, 3, 2)), qh]), scale));
        Value dQkv = context.Op("Concat", [dQ, dK, GroupQueryAttentionGradient.Merge(context, dV)], Attr.Int("axis", -1));

        if (step.NeedsGradient(0))
        {
            step.SetInputGradient(0, context.Op("MatMul", [dQkv, context.Op("Transpose", [w], Attr.Ints("perm", 1, 0))]));
        }

        if (step.NeedsGradient(1))
        {
            // Σ over batch and sequence of xᵀ·dQKV, as one [in, N]ᵀ·[N, 3h] product.
            Value x2d = context.Op("Reshape", [x, context.Op("Concat", [context.Ints(-1), context.Op("Slice", [context.ShapeOfValue(w), context.Ints(0), context.Ints(1)])], Attr.Int("axis", 0))]);
            Value d2 = context.Op("Reshape", [dQkv, context.Op("Concat", [context.Ints(-1), context.Op("Slice", [context.ShapeOfValue(w), context.Ints(1), context.Ints(2)])], Attr.Int("axis", 0))]);
            step.SetInputGradient(1, context.Op("MatMul", [context.Op("Transpose", [x2d], Attr.Ints("perm", 1, 0)), d2]));
        }

        if (bias is not null && step.NeedsGradient(2))
        {
            step.SetInputGradient(2, context.ReduceSum(dQkv, [0, 1], keepDims: false));
        }
    }

    private static DataType FloatType(GradientContext context, Value x) => context.TypeOf(x) is DataType.Undefined ? DataType.Float : context.TypeOf(x);

    /// <summary>1 where key column j of batch row b (and query row i for the 3-D form) is masked, else 0, broadcastable to [B, H, S, T].</summary>
    private static Value KeyMasked(GradientContext context, Node node, Value mask, Value like)
    {
        int rank = context.RankOf(mask) ?? throw new LoraException($"Attention '{node.Name}': the rank of mask_index '{mask.Name}' is unknown, so its form cannot be told.");
        Value masked = rank switch
        {
            // Raw mask [B, T]: 0 masks the key.
            2 => context.Unsqueeze(context.Op("Equal", [context.Op("Cast", [mask], Attr.Int("to", (long)DataType.Int64)), context.Scalar(0, DataType.Int64)]), [1, 2]),
            // [B, S, T] per query row.
            3 => context.Unsqueeze(context.Op("Equal", [context.Op("Cast", [mask], Attr.Int("to", (long)DataType.Int64)), context.Scalar(0, DataType.Int64)]), [1]),
            _ => throw new LoraException($"Attention '{node.Name}': mask_index of rank {rank} is not supported for training (supported: raw [B, T] and [B, S, T]; the 1-D key-end form did not match ORT's kernel in a finite-difference check)."),
        };
        return context.Op("Cast", [masked], Attr.Int("to", (long)FloatType(context, like)));
    }
}
