using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff.Rules;

/// <summary>
/// com.microsoft GroupQueryAttention, differentiated by recomputing the fused op in standard ops (the training graph
/// has no KV cache, so past inputs are absent): Q, K (rotated in place when do_rotary = 1, with the same
/// RotaryEmbedding and caches), V are split into heads, K/V heads are repeated for their query groups,
/// P = softmax(scale·QKᵀ + causal and key-padding masks), O = PV. Backward:
/// dV = Σ_group Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − rowsum(dP ∘ P)), dQ = scale·dS·K, dK = Σ_group scale·dSᵀ·Q, then the
/// rotation is undone (RotaryEmbedding with −sin) and the heads are merged (or concatenated for packed QKV).
/// </summary>
public sealed class GroupQueryAttentionGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["GroupQueryAttention"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        if (step.OptionalInput(3) is not null || step.OptionalInput(4) is not null)
        {
            throw new LoraException($"GroupQueryAttention '{node.Name}' still reads a KV cache; training graphs must have it removed.");
        }

        if (node.GetFloat("softcap", 0f) != 0f || node.GetInt("local_window_size", -1) != -1)
        {
            throw new LoraException($"GroupQueryAttention '{node.Name}' uses softcap or a local window; their gradients are not supported.");
        }

        if (step.OutputGradient(1) is not null || step.OutputGradient(2) is not null)
        {
            throw new LoraException($"The present_key/present_value outputs of GroupQueryAttention '{node.Name}' cannot be differentiated.");
        }

        long heads = node.GetInt("num_heads", 0);
        long kvHeads = node.GetInt("kv_num_heads", 0);
        long group = heads / kvHeads;
        bool packed = step.OptionalInput(1) is null;
        bool rotary = node.GetInt("do_rotary", 0) != 0;
        Value query = step.Input(0);
        Value q, k, v;
        if (packed)
        {
            // Packed QKV [B, S, (H + 2·Hkv)·D]: split by head counts.
            Value hidden = context.Op("Reshape", [query, context.Ints(0, 0, heads + (2 * kvHeads), -1)]);
            IReadOnlyList<Value> parts = context.Builder.OpMulti("Split", [hidden, context.Ints(heads, kvHeads, kvHeads)], 3, [Attr.Int("axis", 2)]);
            q = context.Op("Reshape", [parts[0], context.Ints(0, 0, -1)]);
            k = context.Op("Reshape", [parts[1], context.Ints(0, 0, -1)]);
            v = context.Op("Reshape", [parts[2], context.Ints(0, 0, -1)]);
        }
        else
        {
            q = query;
            k = step.Input(1);
            v = step.Input(2);
        }

        Value? positions = null;
        if (rotary)
        {
            // Without a past, GQA rotates token s of every row by position s.
            Value seq = context.Op("Gather", [context.ShapeOfValue(q), context.Ints(1)]);
            Value range = context.Op("Range", [context.Scalar(0, DataType.Int64), context.Op("Squeeze", [seq, context.Ints(0)]), context.Scalar(1, DataType.Int64)]);
            Value batch = context.Op("Gather", [context.ShapeOfValue(q), context.Ints(0)]);
            positions = context.Op("Expand", [context.Unsqueeze(range, [0]), context.Op("Concat", [batch, seq], Attr.Int("axis", 0))]);
            q = Rotate(context, node, q, positions, heads, negate: false);
            k = Rotate(context, node, k, positions, kvHeads, negate: false);
        }

        Value qh = Heads(context, q, heads);      // [B, H, S, D]
        Value kh = Repeat(context, Heads(context, k, kvHeads), kvHeads, group);
        Value vh = Repeat(context, Heads(context, v, kvHeads), kvHeads, group);
        Value scale = ScaleOf(context, node, qh);

        Value scores = context.Mul(context.Op("MatMul", [qh, context.Op("Transpose", [kh], Attr.Ints("perm", 0, 1, 3, 2))]), scale);
        Value masked = context.Op("Where", [Mask(context, step, scores), context.Scalar(Lowest(context.TypeOf(query)), query), scores]);
        Value p = context.Op("Softmax", [masked], Attr.Int("axis", -1));

        Value dO = Heads(context, step.OutputGradient(0)!, heads);
        Value dV = context.Op("MatMul", [context.Op("Transpose", [p], Attr.Ints("perm", 0, 1, 3, 2)), dO]);
        Value dP = context.Op("MatMul", [dO, context.Op("Transpose", [vh], Attr.Ints("perm", 0, 1, 3, 2))]);
        Value dS = context.Mul(p, context.Sub(dP, context.ReduceSum(context.Mul(dP, p), [-1], keepDims: true)));
        Value dQh = context.Mul(context.Op("MatMul", [dS, kh]), scale);
        Value dKh = context.Mul(context.Op("MatMul", [context.Op("Transpose", [dS], Attr.Ints("perm", 0, 1, 3, 2)), qh]), scale);

        Value dQ = Merge(context, dQh);
        Value dK = Merge(context, GroupSum(context, dKh, kvHeads, group));
        Value dVm = Merge(context, GroupSum(context, dV, kvHeads, group));
        if (rotary)
        {
            dQ = Rotate(context, node, dQ, positions!, heads, negate: true);
            dK = Rotate(context, node, dK, positions!, kvHeads, negate: true);
        }

        if (packed)
        {
            step.SetInputGradient(0, context.Op("Concat", [dQ, dK, dVm], Attr.Int("axis", -1)));
        }
        else
        {
            step.SetInputGradient(0, dQ);
            step.SetInputGradient(1, dK);
            step.SetInputGradient(2, dVm);
        }
    }

    internal static double Lowest(DataType type) => type == DataType.Float16 ? -65504.0 : -3.0e38;

    private static Value ScaleOf(GradientContext context, Node node, Value qh)
    {
        float scale = node.GetFloat("scale", 0f);
        if (scale != 0f)
        {
            return context.Scalar(scale, qh);
        }

        // Default 1/√D, D taken at run time from the head size.
        Value d = context.Op("Cast", [context.Op("Gather", [context.ShapeOfValue(qh), context.Ints(3)])], Attr.Int("to", (long)(context.TypeOf(qh) is DataType.Undefined ? DataType.Float : context.TypeOf(qh))));
        return context.Op("Reciprocal", [context.Op("Sqrt", [d])]);
    }

    /// <summary>True where a score is masked: causal (key after query) or key beyond seqlens_k[b].</summary>
    private static Value Mask(GradientContext context, BackwardStep step, Value scores)
    {
        Value shape = context.ShapeOfValue(scores);
        Value seq = context.Op("Squeeze", [context.Op("Gather", [shape, context.Ints(2)]), context.Ints(0)]);
        Value idx = context.Op("Range", [context.Scalar(0, DataType.Int64), seq, context.Scalar(1, DataType.Int64)]);
        Value causal = context.Op("Less", [context.Unsqueeze(idx, [1]), context.Unsqueeze(idx, [0])]);
        Value seqlens = context.Op("Cast", [step.Input(5)], Attr.Int("to", (long)DataType.Int64));
        Value padding = context.Op("Greater", [context.Unsqueeze(idx, [0, 1, 2]), context.Op("Reshape", [seqlens, context.Ints(-1, 1, 1, 1)])]);
        return context.Op("Or", [causal, padding]);
    }

    private static Value Rotate(GradientContext context, Node node, Value x, Value positions, long heads, bool negate)
    {
        Value cos = node.Inputs[7] ?? throw new LoraException($"GroupQueryAttention '{node.Name}' has do_rotary=1 but no cos cache.");
        Value sin = node.Inputs[8] ?? throw new LoraException($"GroupQueryAttention '{node.Name}' has do_rotary=1 but no sin cache.");
        return context.MsOp("RotaryEmbedding", [x, positions, cos, negate ? context.Neg(sin) : sin],
            Attr.Int("interleaved", node.GetInt("rotary_interleaved", 0)), Attr.Int("num_heads", heads));
    }

    /// <summary>[B, S, H·D] → [B, H, S, D].</summary>
    internal static Value Heads(GradientContext context, Value x, long heads) =>
        context.Op("Transpose", [context.Op("Reshape", [x, context.Ints(0, 0, heads, -1)])], Attr.Ints("perm", 0, 2, 1, 3));

    /// <summary>[B, H, S, D] → [B, S, H·D].</summary>
    internal static Value Merge(GradientContext context, Value x) =>
        context.Op("Reshape", [context.Op("Transpose", [x], Attr.Ints("perm", 0, 2, 1, 3)), context.Ints(0, 0, -1)]);

    /// <summary>[B, Hkv, S, D] → [B, Hkv·G, S, D], each KV head repeated for its G query heads.</summary>
    private static Value Repeat(GradientContext context, Value x, long kvHeads, long group)
    {
        if (group == 1)
        {
            return x;
        }

        Value shape = context.ShapeOfValue(x);
        Value b = context.Op("Gather", [shape, context.Ints(0)]);
        Value s = context.Op("Gather", [shape, context.Ints(2)]);
        Value d = context.Op("Gather", [shape, context.Ints(3)]);
        Value expanded = context.Op("Expand", [context.Unsqueeze(x, [2]), context.Op("Concat", [b, context.Ints(kvHeads, group), s, d], Attr.Int("axis", 0))]);
        return context.Op("Reshape", [expanded, context.Op("Concat", [b, context.Ints(kvHeads * group), s, d], Attr.Int("axis", 0))]);
    }

    /// <summary>[B, Hkv·G, S, D] → [B, Hkv, S, D], summing each KV head's query group.</summary>
    private static Value GroupSum(GradientContext context, Value x, long kvHeads, long group)
    {
        if (group == 1)
        {
            return x;
        }

        Value shape = context.ShapeOfValue(x);
        Value b = context.Op("Gather", [shape, context.Ints(0)]);
        Value s = context.Op("Gather", [shape, context.Ints(2)]);
        Value d = context.Op("Gather", [shape, context.Ints(3)]);
        Value grouped = context.Op("Reshape", [x, context.Op("Concat", [b, context.Ints(kvHeads, group), s, d], Attr.Int("axis", 0))]);
        return context.ReduceSum(grouped, [2], keepDims: false);
    }
}

/// <summary>
/// com.microsoft MultiHeadAttention with separate 3-D query/key/value, no packed bias, no key padding mask and no past
/// (the training form): P = softmax(scale·QKᵀ + attention_bias, causal when unidirectional = 1), O = PV. Recomputed in
/// standard ops; dQ = scale·dS·K, dK = scale·dSᵀ·Q, dV = Pᵀ·dO with dS = P ∘ (dP − rowsum(dP ∘ P)), dP = dO·Vᵀ.
/// The additive attention_bias gets no gradient (masks are not trained).
/// </summary>
public sealed class MultiHeadAttentionGradient : IGradientRule
{
    /// <inheritdoc />
    public string Domain => "com.microsoft";

    /// <inheritdoc />
    public IReadOnlyList<string> OpTypes => ["MultiHeadAttention"];

    /// <inheritdoc />
    public void Backward(GradientContext context, BackwardStep step)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(step);
        Node node = step.Node;
        if (step.OptionalInput(1) is null || step.OptionalInput(2) is null || step.OptionalInput(3) is not null || step.OptionalInput(4) is not null
            || step.OptionalInput(6) is not null || step.OptionalInput(7) is not null)
        {
            throw new LoraException($"MultiHeadAttention '{node.Name}': only separate query/key/value without packed bias, key padding mask or past are supported for training.");
        }

        if (step.NeedsGradient(5))
        {
            throw new LoraException($"MultiHeadAttention '{node.Name}': its attention_bias depends on a trainable tensor; that gradient is not supported.");
        }

        long heads = node.GetInt("num_heads", 0);
        Value qh = GroupQueryAttentionGradient.Heads(context, Up(context, step.Input(0)), heads);
        Value kh = GroupQueryAttentionGradient.Heads(context, Up(context, step.Input(1)), heads);
        Value vh = GroupQueryAttentionGradient.Heads(context, Up(context, step.Input(2)), heads);
        float scaleAttr = node.GetFloat("scale", 0f);
        Value scale = scaleAttr != 0f
            ? context.Scalar(scaleAttr, qh)
            : context.Op("Reciprocal", [context.Op("Sqrt", [context.Op("Cast", [context.Op("Gather", [context.ShapeOfValue(qh), context.Ints(3)])], Attr.Int("to", (long)ComputeType(context, step.Input(0))))])]);
        Value scores = context.Mul(context.Op("MatMul", [qh, context.Op("Transpose", [kh], Attr.Ints("perm", 0, 1, 3, 2))]), scale);
        if (step.OptionalInput(5) is { } bias)
        {
            scores = context.Add(scores, Up(context, bias));
        }

        if (node.GetInt("unidirectional", 0) != 0)
        {
            Value shape = context.ShapeOfValue(scores);
            Value rows = context.Op("Range", [context.Scalar(0, DataType.Int64), context.Op("Squeeze", [context.Op("Gather", [shape, context.Ints(2)]), context.Ints(0)]), context.Scalar(1, DataType.Int64)]);
            Value cols = context.Op("Range", [context.Scalar(0, DataType.Int64), context.Op("Squeeze", [context.Op("Gather", [shape, context.Ints(3)]), context.Ints(0)]), context.Scalar(1, DataType.Int64)]);
            Value causal = context.Op("Less", [context.Unsqueeze(rows, [1]), context.Unsqueeze(cols, [0])]);
            scores = context.Op("Where", [causal, context.Scalar(GroupQueryAttentionGradient.Lowest(ComputeType(context, step.Input(0))), ComputeType(context, step.Input(0))), scores]);
        }

        Value p = context.Op("Softmax", [scores], Attr.Int("axis", -1));
        Value dO = GroupQueryAttentionGradient.Heads(context, Up(context, step.OutputGradient(0) ?? throw new LoraException($"Only the output of MultiHeadAttention '{node.Name}' can be differentiated.")), heads);
        Value dV = context.Op("MatMul", [context.Op("Transpose", [p], Attr.Ints("perm", 0, 1, 3, 2)), dO]);
        Value dP = context.Op("MatMul", [dO, context.Op("Transpose", [vh], Attr.Ints("perm", 0, 1, 3, 2))]);
        Value dS = context.Mul(p, context.Sub(dP, context.ReduceSum(context.Mul(dP, p), [-1], keepDims: true)));
        step.SetInputGradient(0, context.CastLike(GroupQueryAttentionGradient.Merge(context, context.Mul(context.Op("MatMul", [dS, kh]), scale)), step.Input(0)));
        step.SetInputGradient(1, context.CastLike(GroupQueryAttentionGradient.Merge(context, context.Mul(context.Op("MatMul", [context.Op("Transpose", [dS], Attr.Ints("perm", 0, 1, 3, 2)), qh]), scale)), step.Input(1)));
        step.SetInputGradient(2, context.CastLike(GroupQueryAttentionGradient.Merge(context, dV), step.Input(2)));
    }

    /// <summary>
    /// Half-precision attention is recomputed and differentiated in float32: dS = P ∘ (dP − rowsum(dP ∘ P)) subtracts
    /// nearly equal numbers, which in fp16 loses most digits (seen: 20 % gradient error on the fp16 GenAI llama), and
    /// ORT's CPU build runs these fp16 ops through inserted fp32 casts anyway.
    /// </summary>
    private static Value Up(GradientContext context, Value v) =>
        context.TypeOf(v) is DataType.Float16 or DataType.BFloat16 ? context.Op("Cast", [v], Attr.Int("to", (long)DataType.Float)) : v;

    private static DataType ComputeType(GradientContext context, Value v) => context.TypeOf(v) switch
    {
        DataType.Float16 or DataType.BFloat16 or DataType.Undefined => DataType.Float,
        DataType t => t,
    };
}
