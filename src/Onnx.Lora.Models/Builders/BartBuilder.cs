using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>Sizes of a BART-style encoder-decoder (the same sizes for both stacks).</summary>
public sealed record BartConfig : TransformerConfig
{
    /// <inheritdoc />
    public override int Intermediate { get; init; } = 128;

    /// <inheritdoc />
    public override float LayerNormEps { get; init; } = 1e-5f;
}

/// <summary>The two graphs of an encoder-decoder export, as Optimum writes them.</summary>
/// <param name="Encoder">encoder_model.onnx: input_ids, attention_mask → last_hidden_state.</param>
/// <param name="Decoder">decoder_model.onnx: input_ids, encoder_attention_mask, encoder_hidden_states → logits.</param>
public sealed record EncoderDecoderModels(Model Encoder, Model Decoder) : IDisposable
{
    /// <summary>Optimum's file name of the encoder.</summary>
    public const string EncoderFile = "encoder_model.onnx";

    /// <summary>Optimum's file name of the decoder without past (the one a training step runs).</summary>
    public const string DecoderFile = "decoder_model.onnx";

    /// <inheritdoc />
    public void Dispose()
    {
        Encoder.Dispose();
        Decoder.Dispose();
    }
}

/// <summary>
/// Builds a BART-style encoder-decoder in the two graphs Optimum exports for <c>BartForConditionalGeneration</c>:
/// shared token embedding, learned positions, post-LayerNorm layers (self-attention, the decoder's causal
/// self-attention and cross-attention over the encoder's states, GELU MLP), linears as MatMul + Add with weights
/// [in, out], and an untied lm_head. Nodes are named as Optimum's torch.onnx export names them: the decoder from the
/// whole model (<c>/model/decoder/layers.0/encoder_attn/k_proj/MatMul</c>, PEFT's
/// <c>model.decoder.layers.0.encoder_attn.k_proj</c>), the encoder from the encoder module alone
/// (<c>/layers.0/self_attn/q_proj/MatMul</c>, which training and merging map to <c>model.encoder.layers.0…</c>).
/// </summary>
/// <remarks>
/// NOTE: simplifications against HF BART, which the reference forward in the tests shares: positions start at 0 (BART
/// offsets its learned positions by 2), no final_logits_bias, no embedding scale. None changes the graph's kind.
/// </remarks>
public static class BartBuilder
{
    // HF uses the dtype minimum for masked positions; -1e9 keeps sums finite.
    private const float MaskValue = -1e9f;

    /// <summary>Builds both parts with seeded random weights (the shared embedding is the same tensor in both).</summary>
    public static EncoderDecoderModels Build(BartConfig config) => Build(config, new RandomWeightSource(config?.Seed ?? 0));

    /// <summary>Builds both parts with weights from <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public static EncoderDecoderModels Build(BartConfig config, IWeightSource weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        return new EncoderDecoderModels(BuildEncoder(config, weights), BuildDecoder(config, weights));
    }

    private static Model BuildEncoder(BartConfig c, IWeightSource weights)
    {
        var b = new GraphBuilder("main_graph", c.Opset);
        var constants = new ConstantCache(b);
        Value ids = b.Input("input_ids", DataType.Int64, "batch_size", "encoder_sequence_length");
        Value mask = b.Input("attention_mask", DataType.Int64, "batch_size", "encoder_sequence_length");
        // Optimum exports the encoder module alone: its node paths start below model.encoder ("/layers.0/…").
        Value x = Embed(b, constants, weights, c, ids, "encoder", scope: string.Empty);
        Value bias = Gpt2Builder.PaddingBias(b, constants, string.Empty, mask, MaskValue);
        for (int layer = 0; layer < c.Layers; layer++)
        {
            string scope = $"/layers.{layer}";
            string key = $"model.encoder.layers.{layer}";
            x = Residual(b, weights, c, x, Attend(b, constants, weights, c, x, x, bias, $"{scope}/self_attn", $"{key}.self_attn"), $"{scope}/self_attn_layer_norm", $"{key}.self_attn_layer_norm");
            x = Residual(b, weights, c, x, Mlp(b, constants, weights, c, x, scope, key), $"{scope}/final_layer_norm", $"{key}.final_layer_norm");
        }

        b.Output(x, "last_hidden_state", DataType.Float, "batch_size", "encoder_sequence_length", c.Hidden);
        return b.Model;
    }

    private static Model BuildDecoder(BartConfig c, IWeightSource weights)
    {
        var b = new GraphBuilder("main_graph", c.Opset);
        var constants = new ConstantCache(b);
        Value ids = b.Input("input_ids", DataType.Int64, "batch_size", "decoder_sequence_length");
        Value encoderMask = b.Input("encoder_attention_mask", DataType.Int64, "batch_size", "encoder_sequence_length");
        Value encoderStates = b.Input("encoder_hidden_states", DataType.Float, "batch_size", "encoder_sequence_length", c.Hidden);
        Value y = Embed(b, constants, weights, c, ids, "decoder", "/model/decoder");
        Value causal = CausalBias(b, constants, c.MaxPositions, ids);
        Value crossBias = Gpt2Builder.PaddingBias(b, constants, "/model/decoder", encoderMask, MaskValue);
        for (int layer = 0; layer < c.Layers; layer++)
        {
            string scope = $"/model/decoder/layers.{layer}";
            string key = $"model.decoder.layers.{layer}";
            y = Residual(b, weights, c, y, Attend(b, constants, weights, c, y, y, causal, $"{scope}/self_attn", $"{key}.self_attn"), $"{scope}/self_attn_layer_norm", $"{key}.self_attn_layer_norm");
            y = Residual(b, weights, c, y, Attend(b, constants, weights, c, y, encoderStates, crossBias, $"{scope}/encoder_attn", $"{key}.encoder_attn"), $"{scope}/encoder_attn_layer_norm", $"{key}.encoder_attn_layer_norm");
            y = Residual(b, weights, c, y, Mlp(b, constants, weights, c, y, scope, key), $"{scope}/final_layer_norm", $"{key}.final_layer_norm");
        }

        Value head = b.Weight(weights, "lm_head.weight", new("lm_head.weight", WeightRole.Linear, [c.Hidden, c.Vocab]));
        b.Output(b.MatMul(y, head, "/lm_head/MatMul"), "logits", DataType.Float, "batch_size", "decoder_sequence_length", c.Vocab);
        return b.Model;
    }

    /// <summary>Shared token embedding + the stack's learned positions, then layernorm_embedding.</summary>
    private static Value Embed(GraphBuilder b, ConstantCache constants, IWeightSource weights, BartConfig c, Value ids, string stack, string scope)
    {
        Value tokens = b.Weight(weights, "model.shared.weight", new("model.shared.weight", WeightRole.Embedding, [c.Vocab, c.Hidden]));
        Value table = b.Weight(weights, $"model.{stack}.embed_positions.weight", new($"model.{stack}.embed_positions.weight", WeightRole.Embedding, [c.MaxPositions, c.Hidden]));
        Value seq = b.Node(scope, "Gather", [b.Node(scope, "Shape", [ids]), constants.Int64Scalar("const_i1", 1)], [Attr.Int("axis", 0)]);
        Value positions = b.Node($"{scope}/embed_positions", "Range", [constants.Int64Scalar("const_i0", 0), seq, constants.Int64Scalar("const_i1", 1)]);
        Value x = b.Node(scope, "Add", [b.Node($"{scope}/embed_tokens", "Gather", [tokens, ids]), b.Node($"{scope}/embed_positions", "Gather", [table, positions])]);
        return b.LayerNorm(weights, $"{scope}/layernorm_embedding", x, $"model.{stack}.layernorm_embedding", c.Hidden, c.LayerNormEps);
    }

    /// <summary>Attention of <paramref name="query"/> over <paramref name="memory"/> (itself for self-attention), with out_proj.</summary>
    private static Value Attend(GraphBuilder b, ConstantCache constants, IWeightSource weights, BartConfig c, Value query, Value memory, Value bias, string scope, string key)
    {
        Value q = Linear(b, weights, constants, query, $"{scope}/q_proj", $"{key}.q_proj", c.Hidden, c.Hidden);
        Value k = Linear(b, weights, constants, memory, $"{scope}/k_proj", $"{key}.k_proj", c.Hidden, c.Hidden);
        Value v = Linear(b, weights, constants, memory, $"{scope}/v_proj", $"{key}.v_proj", c.Hidden, c.Hidden);
        Value context = Gpt2Builder.Attention(b, constants, scope, [q, k, v], bias, c.Heads, c.HeadDim, c.Hidden);
        return Linear(b, weights, constants, context, $"{scope}/out_proj", $"{key}.out_proj", c.Hidden, c.Hidden);
    }

    private static Value Mlp(GraphBuilder b, ConstantCache constants, IWeightSource weights, BartConfig c, Value x, string scope, string key)
    {
        Value up = Linear(b, weights, constants, x, $"{scope}/fc1", $"{key}.fc1", c.Hidden, c.Intermediate);
        Value act = b.Gelu($"{scope}/activation_fn", up, constants.Float);
        return Linear(b, weights, constants, act, $"{scope}/fc2", $"{key}.fc2", c.Intermediate, c.Hidden);
    }

    private static Value Residual(GraphBuilder b, IWeightSource weights, BartConfig c, Value x, Value branch, string scope, string key) =>
        b.LayerNorm(weights, scope, b.Node(scope, "Add", [x, branch]), key, c.Hidden, c.LayerNormEps);

    private static Value Linear(GraphBuilder b, IWeightSource weights, ConstantCache constants, Value x, string scope, string key, int inFeatures, int outFeatures) =>
        Gpt2Builder.Linear(b, weights, constants, LinearStyle.MatMulAdd, x, scope, key, inFeatures, outFeatures);

    /// <summary>The [s, s] causal bias of the decoder's self-attention, sliced from a [max, max] table.</summary>
    private static Value CausalBias(GraphBuilder b, ConstantCache constants, int maxPositions, Value ids)
    {
        var causal = new float[(long)maxPositions * maxPositions];
        for (int i = 0; i < maxPositions; i++)
        {
            for (int j = i + 1; j < maxPositions; j++)
            {
                causal[((long)i * maxPositions) + j] = MaskValue;
            }
        }

        const string Scope = "/model/decoder/causal_mask";
        Value table = b.Floats("causal_mask", [maxPositions, maxPositions], causal);
        Value seq = b.Node(Scope, "Slice", [b.Node(Scope, "Shape", [ids]), constants.Int64s("const_start_1", 1), constants.Int64s("const_end_2", 2)]);
        Value ends = b.Node(Scope, "Concat", [seq, seq], [Attr.Int("axis", 0)]);
        return b.Node(Scope, "Slice", [table, constants.Int64s("const_zero_2", 0, 0), ends, constants.Int64s("const_axes_0_1", 0, 1)]);
    }
}
