using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>How GPT-2's Conv1D projections (weight [in, out] plus bias) are exported.</summary>
public enum LinearStyle
{
    /// <summary>MatMul then Add of the bias.</summary>
    MatMulAdd,

    /// <summary>Reshape to 2-D, Gemm with the bias as C, reshape back (torch's addmm export).</summary>
    Gemm,
}

/// <summary>Sizes and options of a GPT-2 style decoder.</summary>
public sealed record Gpt2Config : TransformerConfig
{
    /// <inheritdoc />
    public override int Intermediate { get; init; } = 256; // GPT-2 uses 4 × hidden

    /// <inheritdoc />
    public override float LayerNormEps { get; init; } = 1e-5f;

    /// <summary>How c_attn, c_proj and c_fc are exported.</summary>
    public LinearStyle Linear { get; init; } = LinearStyle.MatMulAdd;
}

/// <summary>
/// Builds a GPT-2 style decoder as torch.onnx exports Hugging Face's GPT2LMHeadModel: token + learned position
/// embeddings, LayerNormalization, a fused <c>c_attn</c> projection (MatMul + Add, or Gemm) split into q, k, v,
/// causal attention, <c>c_proj</c>, an MLP <c>c_fc</c> → GELU → <c>c_proj</c>, a final <c>ln_f</c> and tied logits.
/// </summary>
/// <remarks>
/// Inputs <c>input_ids</c>, <c>attention_mask</c> int64 [batch_size, sequence_length]; output <c>logits</c>.
/// Nodes are named <c>/transformer/h.N/attn/c_attn/MatMul</c>; weights keep their Hugging Face names
/// (<c>transformer.h.N.attn.c_attn.weight</c> [in, out], as Conv1D stores them, and <c>.bias</c>).
/// </remarks>
public static class Gpt2Builder
{
    private const float MaskValue = -1e9f;

    /// <summary>Builds the model with seeded random weights.</summary>
    public static Model Build(Gpt2Config config) => Build(config, new RandomWeightSource(config?.Seed ?? 0));

    /// <summary>Builds the model with weights from <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public static Model Build(Gpt2Config config, IWeightSource weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        var b = new GraphBuilder("main_graph", config.Opset);
        var constants = new ConstantCache(b);
        var c = config;

        Value ids = b.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        Value mask = b.Input("attention_mask", DataType.Int64, "batch_size", "sequence_length");
        Value wte = b.Weight(weights, "transformer.wte.weight", new("transformer.wte.weight", WeightRole.Embedding, [c.Vocab, c.Hidden]));
        Value wpe = b.Weight(weights, "transformer.wpe.weight", new("transformer.wpe.weight", WeightRole.Embedding, [c.MaxPositions, c.Hidden]));
        Value seq = b.Node("/transformer", "Gather", [b.Node("/transformer", "Shape", [ids]), constants.Int64Scalar("const_i1", 1)], [Attr.Int("axis", 0)]);
        Value positions = b.Node("/transformer", "Range", [constants.Int64Scalar("const_i0", 0), seq, constants.Int64Scalar("const_i1", 1)]);
        Value x = b.Node("/transformer", "Add", [b.Node("/transformer/wte", "Gather", [wte, ids]), b.Node("/transformer/wpe", "Gather", [wpe, positions])]);
        Value bias = CausalBias(b, constants, c.MaxPositions, seq, mask);

        for (int layer = 0; layer < c.Layers; layer++)
        {
            string scope = $"/transformer/h.{layer}";
            string key = $"transformer.h.{layer}";
            Value h = b.LayerNorm(weights, $"{scope}/ln_1", x, $"{key}.ln_1", c.Hidden, c.LayerNormEps);
            Value qkv = Linear(b, weights, constants, c.Linear, h, $"{scope}/attn/c_attn", $"{key}.attn.c_attn", c.Hidden, 3 * c.Hidden);
            IReadOnlyList<Value> parts = b.OpMulti("Split", [qkv, constants.Int64s("split_qkv", c.Hidden, c.Hidden, c.Hidden)], 3, [Attr.Int("axis", -1)], name: $"{scope}/attn/Split");
            Value context = Attention(b, constants, $"{scope}/attn", parts, bias, c.Heads, c.HeadDim, c.Hidden);
            Value attn = Linear(b, weights, constants, c.Linear, context, $"{scope}/attn/c_proj", $"{key}.attn.c_proj", c.Hidden, c.Hidden);
            x = b.Node(scope, "Add", [attn, x]);
            h = b.LayerNorm(weights, $"{scope}/ln_2", x, $"{key}.ln_2", c.Hidden, c.LayerNormEps);
            Value fc = Linear(b, weights, constants, c.Linear, h, $"{scope}/mlp/c_fc", $"{key}.mlp.c_fc", c.Hidden, c.Intermediate);
            Value act = b.Gelu($"{scope}/mlp/act", fc, constants.Float);
            Value mlp = Linear(b, weights, constants, c.Linear, act, $"{scope}/mlp/c_proj", $"{key}.mlp.c_proj", c.Intermediate, c.Hidden);
            x = b.Node(scope, "Add", [x, mlp]);
        }

        x = b.LayerNorm(weights, "/transformer/ln_f", x, "transformer.ln_f", c.Hidden, c.LayerNormEps);

        // The tied classifier is exported as its own transposed initializer, as torch does for lm_head.
        float[] table = wte.Initializer!.ToFloat32();
        Value head = b.Floats("onnx::MatMul_lm_head", [c.Hidden, c.Vocab], BuilderHelpers.Transpose(table, c.Vocab, c.Hidden));
        b.Output(b.MatMul(x, head, "/lm_head/MatMul"), "logits", DataType.Float, "batch_size", "sequence_length", c.Vocab);
        return b.Model;
    }

    internal static Value Linear(GraphBuilder b, IWeightSource weights, ConstantCache constants, LinearStyle style, Value x, string scope, string key, int inFeatures, int outFeatures)
    {
        Value w = b.Weight(weights, $"{key}.weight", new($"{key}.weight", WeightRole.Linear, [inFeatures, outFeatures]));
        Value bias = b.Weight(weights, $"{key}.bias", new($"{key}.bias", WeightRole.Bias, [outFeatures]));
        if (style == LinearStyle.MatMulAdd)
        {
            return b.Node(scope, "Add", [b.Node(scope, "MatMul", [x, w]), bias]);
        }

        // Gemm is 2-D only: flatten [b, s, in] to [b·s, in] and restore [b, s, out] from the input's shape.
        Value shape = b.Node(scope, "Shape", [x]);
        Value leading = b.Node(scope, "Slice", [shape, constants.Int64s("const_start_0", 0), constants.Int64s("const_end_2", 2)]);
        Value outShape = b.Node(scope, "Concat", [leading, constants.Int64s($"const_out_{outFeatures}", outFeatures)], [Attr.Int("axis", 0)]);
        Value flat = b.Node(scope, "Reshape", [x, constants.Int64s($"const_flat_{inFeatures}", -1, inFeatures)]);
        Value gemm = b.Node(scope, "Gemm", [flat, w, bias], [Attr.Float("alpha", 1f), Attr.Float("beta", 1f)]);
        return b.Node(scope, "Reshape", [gemm, outShape]);
    }

    /// <summary>Multi-head attention over q, k, v [b, s, hidden] with an additive bias [b|1, 1, s, s]; returns [b, s, hidden].</summary>
    internal static Value Attention(GraphBuilder b, ConstantCache constants, string scope, IReadOnlyList<Value> qkv, Value bias, int heads, int headDim, int hidden)
    {
        Value shape = constants.Int64s($"shape_heads_{heads}", 0, 0, heads, headDim);
        Value Split(Value v, long[] perm) => b.Node(scope, "Transpose", [b.Node(scope, "Reshape", [v, shape])], [Attr.Ints("perm", perm)]);
        Value q = Split(qkv[0], [0, 2, 1, 3]);
        Value kT = Split(qkv[1], [0, 2, 3, 1]);
        Value v = Split(qkv[2], [0, 2, 1, 3]);
        Value scores = b.Node(scope, "Div", [b.Node(scope, "MatMul", [q, kT]), constants.Float("const_scale", MathF.Sqrt(headDim))]);
        Value probs = b.Node(scope, "Softmax", [b.Node(scope, "Add", [scores, bias])], [Attr.Int("axis", -1)]);
        Value context = b.Node(scope, "Transpose", [b.Node(scope, "MatMul", [probs, v])], [Attr.Ints("perm", 0, 2, 1, 3)]);
        return b.Node(scope, "Reshape", [context, constants.Int64s("shape_merge", 0, 0, hidden)]);
    }

    private static Value CausalBias(GraphBuilder b, ConstantCache constants, int maxPositions, Value seq, Value mask)
    {
        var causal = new float[(long)maxPositions * maxPositions];
        for (int i = 0; i < maxPositions; i++)
        {
            for (int j = i + 1; j < maxPositions; j++)
            {
                causal[((long)i * maxPositions) + j] = MaskValue;
            }
        }

        Value table = b.Floats("causal_mask", [maxPositions, maxPositions], causal);
        Value seq1 = b.Node("/transformer", "Unsqueeze", [seq, constants.Int64s("const_axis0", 0)]);
        Value ends = b.Node("/transformer", "Concat", [seq1, seq1], [Attr.Int("axis", 0)]);
        Value square = b.Node("/transformer", "Slice", [table, constants.Int64s("const_zero_2", 0, 0), ends, constants.Int64s("const_axes_0_1", 0, 1)]);
        return b.Node("/transformer", "Add", [square, PaddingBias(b, constants, "/transformer", mask, MaskValue)]);
    }

    /// <summary>(1 − mask) · <paramref name="maskValue"/> as [b, 1, 1, s].</summary>
    internal static Value PaddingBias(GraphBuilder b, ConstantCache constants, string scope, Value mask, float maskValue)
    {
        Value maskF = b.Node(scope, "Cast", [mask], [Attr.Int("to", (long)DataType.Float)]);
        Value padding = b.Node(scope, "Mul", [b.Node(scope, "Sub", [constants.Float("const_1.0", 1f), maskF]), constants.Float("const_neg", maskValue)]);
        return b.Node(scope, "Unsqueeze", [padding, constants.Int64s("const_axes_1_2", 1, 2)]);
    }
}
