using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Quantization;

namespace Onnx.Lora.Models.Builders;

/// <summary>Options of <see cref="GenAiLlamaBuilder"/> on top of the model sizes.</summary>
public sealed record GenAiLlamaConfig
{
    /// <summary>Model sizes (and seed, RoPE style, eps, tying).</summary>
    public LlamaConfig Model { get; init; } = new();

    /// <summary>Element type of weights, activations, KV cache and logits: <see cref="DataType.Float"/> or <see cref="DataType.Float16"/>.</summary>
    public DataType Precision { get; init; } = DataType.Float;

    /// <summary>One <c>qkv_proj</c> MatMul [hidden, hidden + 2·kv] instead of q/k/v projections.</summary>
    public bool FusedQkv { get; init; }

    /// <summary>Decoder-layer projections as int4 <c>com.microsoft.MatMulNBits</c> (lm_head stays float).</summary>
    public bool Int4 { get; init; }

    /// <summary>
    /// Rotate q and k with separate <c>com.microsoft.RotaryEmbedding</c> nodes fed by a <c>position_ids</c> input (as
    /// the model builder's MultiHeadAttention graphs do) instead of GroupQueryAttention's <c>do_rotary</c>. Needs
    /// separate q/k/v projections.
    /// </summary>
    public bool RotaryEmbeddingNodes { get; init; }

    /// <summary>MatMulNBits block size along K.</summary>
    public int BlockSize { get; init; } = MatMulNBitsCodec.DefaultBlockSize;
}

/// <summary>
/// Builds a Llama decoder in the shape ORT GenAI's model builder emits: SimplifiedLayerNormalization and
/// SkipSimplifiedLayerNormalization, <c>com.microsoft.GroupQueryAttention</c> with <c>do_rotary</c> (cos/sin caches),
/// a KV cache (<c>past_key_values.N.key/value</c> → <c>present.N.key/value</c>, [batch, kv_heads, seq, head_dim]),
/// nodes named <c>/model/layers.N/attn/q_proj/MatMul</c>, fp32 or fp16, optional fused qkv_proj and optional int4
/// MatMulNBits weights.
/// </summary>
/// <remarks>
/// Weights are asked of the <see cref="IWeightSource"/> under the same Hugging Face keys as
/// <see cref="TorchLlamaBuilder"/> (<c>model.layers.N.self_attn.q_proj.weight</c>), so both builders given the same
/// source compute the same function. Initializers are named as GenAI names them
/// (<c>model.layers.N.attn.q_proj.MatMul.weight</c>).
/// </remarks>
public static class GenAiLlamaBuilder
{
    private const string Microsoft = "com.microsoft";

    /// <summary>Builds the model with seeded random weights.</summary>
    public static Model Build(GenAiLlamaConfig config) => Build(config, new RandomWeightSource(config?.Model.Seed ?? 0));

    /// <summary>Builds the model with weights from <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Sizes do not fit together or the precision is not float/float16.</exception>
    public static Model Build(GenAiLlamaConfig config, IWeightSource weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Model.Validate();
        if (config.Precision is not (DataType.Float or DataType.Float16))
        {
            throw new ArgumentOutOfRangeException(nameof(config), $"Precision {config.Precision} is not supported; use Float or Float16.");
        }

        // ORT's CPU GroupQueryAttention refuses do_rotary unless head_size is a multiple of 16.
        if (!config.RotaryEmbeddingNodes && config.Model.HeadDim % 16 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(config), $"GroupQueryAttention with do_rotary needs a head size that is a multiple of 16 (ORT CPU); hidden {config.Model.Hidden} / heads {config.Model.Heads} = {config.Model.HeadDim}. Use RotaryEmbeddingNodes or other sizes.");
        }

        if (config.RotaryEmbeddingNodes && config.FusedQkv)
        {
            throw new ArgumentOutOfRangeException(nameof(config), "RotaryEmbedding nodes need separate q/k/v projections; turn off FusedQkv.");
        }

        return new Emitter(config, weights).Emit();
    }

    private sealed class Emitter(GenAiLlamaConfig options, IWeightSource weights)
    {
        private readonly LlamaConfig _c = options.Model;
        private readonly DataType _t = options.Precision;
        private readonly GraphBuilder _b = new("main_graph", opset: 14);
        private Value? _positionIds;

        public Model Emit()
        {
            _b.Model.RequireOpset(Microsoft, 1);
            var batch = new Dim("batch_size");
            Value ids = _b.Input("input_ids", DataType.Int64, batch, "sequence_length");
            Value mask = _b.Input("attention_mask", DataType.Int64, batch, "total_sequence_length");
            if (options.RotaryEmbeddingNodes)
            {
                _positionIds = _b.Input("position_ids", DataType.Int64, batch, "sequence_length");
            }
            var past = new List<(Value Key, Value Value)>();
            for (int layer = 0; layer < _c.Layers; layer++)
            {
                past.Add((
                    _b.Input($"past_key_values.{layer}.key", _t, batch, _c.KvHeads, "past_sequence_length", _c.HeadDim),
                    _b.Input($"past_key_values.{layer}.value", _t, batch, _c.KvHeads, "past_sequence_length", _c.HeadDim)));
            }

            // GroupQueryAttention wants seqlens_k = (valid tokens - 1) per row and the total length, both int32.
            const string MaskScope = "/model/attn_mask_reformat/attn_mask_subgraph";
            Value one = _b.Int64s("/model/constants/TensorProto.INT64/1D/1", 1);
            Value sum = _b.Node(MaskScope, "ReduceSum", [mask, one]);
            Value seqlens = _b.Node(MaskScope, "Cast", [_b.Node(MaskScope, "Sub", [sum, one])], [Attr.Int("to", (long)DataType.Int32)]);
            Value shape = _b.Node(MaskScope, "Shape", [mask]);
            Value total = _b.Node(MaskScope, "Gather", [shape, _b.Initializer(InMemoryTensor.FromInt64s("/model/constants/TensorProto.INT64/0D/1", [], [1]))], [Attr.Int("axis", 0)]);
            Value totalLength = _b.Node(MaskScope, "Cast", [total], [Attr.Int("to", (long)DataType.Int32)]);

            (float[] cos, float[] sin, int width) = BuilderHelpers.RotaryTables(_c.MaxPositions, _c.HeadDim, _c.RopeTheta, duplicate: false);
            Value cosCache = Constant("cos_cache", [_c.MaxPositions, width], cos);
            Value sinCache = Constant("sin_cache", [_c.MaxPositions, width], sin);

            Value embedTable = _b.Weight(weights, "model.embed_tokens.weight", new("model.embed_tokens.weight", WeightRole.Embedding, [_c.Vocab, _c.Hidden]), _t);
            Value x = _b.Node("/model/embed_tokens", "Gather", [embedTable, ids]);
            Value h = _b.Op("SimplifiedLayerNormalization", [x, Norm("model.layers.0.input_layernorm.weight")],
                [Attr.Float("epsilon", _c.RmsNormEps), Attr.Int("axis", -1), Attr.Int("stash_type", 1)], name: "/model/layers.0/input_layernorm/LayerNorm");
            Value residual = x;
            for (int layer = 0; layer < _c.Layers; layer++)
            {
                string scope = $"/model/layers.{layer}";
                Value attn = Attention(h, layer, past[layer], seqlens, totalLength, cosCache, sinCache);
                (h, residual) = SkipNorm($"{scope}/post_attention_layernorm", residual, attn, $"model.layers.{layer}.post_attention_layernorm.weight");
                Value mlp = Mlp(h, layer);
                string next = layer + 1 < _c.Layers ? $"/model/layers.{layer + 1}/input_layernorm" : $"/model/layers.{_c.Layers}/final_norm_layernorm";
                string nextKey = layer + 1 < _c.Layers ? $"model.layers.{layer + 1}.input_layernorm.weight" : "model.norm.weight";
                (h, residual) = SkipNorm(next, residual, mlp, nextKey);
            }

            Value lmHead = LmHead(embedTable);
            Value logits = _b.MatMul(h, lmHead, "/lm_head/MatMul");
            _b.Output(logits, "logits", _t, batch, "sequence_length", _c.Vocab);
            return _b.Model;
        }

        private Value Constant(string name, long[] dims, float[] values) =>
            _b.Initializer(_t == DataType.Float ? InMemoryTensor.FromFloats(name, dims, values) : new InMemoryTensor(name, _t, dims, TensorConvert.FromFloat32(values, _t)));

        private Value Norm(string key) => _b.Weight(weights, key, new(key, WeightRole.NormScale, [_c.Hidden]), _t);

        private (Value Normed, Value Sum) SkipNorm(string scope, Value input, Value skip, string key)
        {
            Value gamma = Norm(key);
            var node = new Node(Microsoft, "SkipSimplifiedLayerNormalization", [input, skip, gamma],
                [_b.FreshName($"{scope}/output_0"), string.Empty, string.Empty, _b.FreshName($"{scope}/output_3")],
                [Attr.Float("epsilon", _c.RmsNormEps)], _b.FreshName($"{scope}/SkipLayerNorm"));
            _b.Graph.Add(node);
            return (node.Outputs[0], node.Outputs[3]);
        }

        private Value LmHead(Value embedTable)
        {
            if (!_c.TiedEmbeddings)
            {
                return _b.Weight(weights, "lm_head.MatMul.weight", new("lm_head.weight", WeightRole.Linear, [_c.Hidden, _c.Vocab]), _t);
            }

            float[] table = embedTable.Initializer!.ToFloat32();
            return Constant("lm_head.MatMul.weight", [_c.Hidden, _c.Vocab], BuilderHelpers.Transpose(table, _c.Vocab, _c.Hidden));
        }

        /// <summary>A projection: MatMul on a float weight, or MatMulNBits on its int4 quantization.</summary>
        private Value Linear(Value x, string scope, string initializerStem, float[] weight, int inFeatures, int outFeatures)
        {
            if (!options.Int4)
            {
                Value w = Constant($"{initializerStem}.MatMul.weight", [inFeatures, outFeatures], weight);
                return _b.MatMul(x, w, $"{scope}/MatMul");
            }

            MatMulNBitsWeights q = MatMulNBitsCodec.Quantize(weight, inFeatures, outFeatures, options.BlockSize);
            Value packed = _b.Initializer(new InMemoryTensor($"{initializerStem}.MatMul.weight_Q4", DataType.UInt8, q.PackedDims, q.Packed));
            Value scales = Constant($"{initializerStem}.MatMul.weight_scales", [q.Scales.Length], q.Scales);
            Value zeroPoints = _b.Initializer(new InMemoryTensor($"{initializerStem}.MatMul.weight_zero_points", DataType.UInt8, [q.ZeroPoints.Length], q.ZeroPoints));
            return _b.Op("MatMulNBits", [x, packed, scales, zeroPoints],
                [Attr.Int("K", inFeatures), Attr.Int("N", outFeatures), Attr.Int("bits", MatMulNBitsWeights.Bits), Attr.Int("block_size", options.BlockSize), Attr.Int("accuracy_level", 0)],
                Microsoft, $"{scope}/MatMul_Q4");
        }

        private float[] LinearWeight(string key, int inFeatures, int outFeatures) =>
            weights.Floats(new(key, WeightRole.Linear, [inFeatures, outFeatures]));

        private Value Attention(Value h, int layer, (Value Key, Value Value) past, Value seqlens, Value totalLength, Value cos, Value sin)
        {
            string scope = $"/model/layers.{layer}/attn";
            string stem = $"model.layers.{layer}.attn";
            string key = $"model.layers.{layer}.self_attn";
            float[] wq = LinearWeight($"{key}.q_proj.weight", _c.Hidden, _c.Hidden);
            float[] wk = LinearWeight($"{key}.k_proj.weight", _c.Hidden, _c.KvDim);
            float[] wv = LinearWeight($"{key}.v_proj.weight", _c.Hidden, _c.KvDim);
            Value?[] qkv;
            if (options.FusedQkv)
            {
                float[] fused = ConcatColumns(_c.Hidden, (wq, _c.Hidden), (wk, _c.KvDim), (wv, _c.KvDim));
                qkv = [Linear(h, $"{scope}/qkv_proj", $"{stem}.qkv_proj", fused, _c.Hidden, _c.Hidden + (2 * _c.KvDim)), null, null];
            }
            else
            {
                qkv = [
                    Linear(h, $"{scope}/q_proj", $"{stem}.q_proj", wq, _c.Hidden, _c.Hidden),
                    Linear(h, $"{scope}/k_proj", $"{stem}.k_proj", wk, _c.Hidden, _c.KvDim),
                    Linear(h, $"{scope}/v_proj", $"{stem}.v_proj", wv, _c.Hidden, _c.KvDim),
                ];
            }

            if (_positionIds is not null)
            {
                Attr[] rotary = [Attr.Int("interleaved", _c.Rope == RopeStyle.Interleaved ? 1 : 0), Attr.Int("num_heads", 0), Attr.Int("rotary_embedding_dim", 0)];
                qkv[0] = _b.Op("RotaryEmbedding", [qkv[0], _positionIds, cos, sin], rotary, Microsoft, $"{scope}/q_rotary/RotaryEmbedding");
                qkv[1] = _b.Op("RotaryEmbedding", [qkv[1], _positionIds, cos, sin], rotary, Microsoft, $"{scope}/k_rotary/RotaryEmbedding");
            }

            var node = new Node(Microsoft, "GroupQueryAttention",
                _positionIds is null ? [qkv[0], qkv[1], qkv[2], past.Key, past.Value, seqlens, totalLength, cos, sin] : [qkv[0], qkv[1], qkv[2], past.Key, past.Value, seqlens, totalLength],
                [_b.FreshName($"{scope}/GroupQueryAttention/output_0"), $"present.{layer}.key", $"present.{layer}.value"],
                [
                    Attr.Int("num_heads", _c.Heads), Attr.Int("kv_num_heads", _c.KvHeads), Attr.Float("scale", 1f / MathF.Sqrt(_c.HeadDim)),
                    Attr.Int("do_rotary", _positionIds is null ? 1 : 0), Attr.Int("rotary_interleaved", _c.Rope == RopeStyle.Interleaved ? 1 : 0),
                ],
                _b.FreshName($"{scope}/GroupQueryAttention"));
            _b.Graph.Add(node);
            var batch = new Dim("batch_size");
            _b.Output(node.Outputs[1], null, _t, batch, _c.KvHeads, "total_sequence_length", _c.HeadDim);
            _b.Output(node.Outputs[2], null, _t, batch, _c.KvHeads, "total_sequence_length", _c.HeadDim);
            float[] wo = LinearWeight($"{key}.o_proj.weight", _c.Hidden, _c.Hidden);
            return Linear(node.Outputs[0], $"{scope}/o_proj", $"{stem}.o_proj", wo, _c.Hidden, _c.Hidden);
        }

        private Value Mlp(Value h, int layer)
        {
            string scope = $"/model/layers.{layer}/mlp";
            string key = $"model.layers.{layer}.mlp";
            Value gate = Linear(h, $"{scope}/gate_proj", $"{key}.gate_proj", LinearWeight($"{key}.gate_proj.weight", _c.Hidden, _c.Intermediate), _c.Hidden, _c.Intermediate);
            Value up = Linear(h, $"{scope}/up_proj", $"{key}.up_proj", LinearWeight($"{key}.up_proj.weight", _c.Hidden, _c.Intermediate), _c.Hidden, _c.Intermediate);
            Value act = _b.Node($"{scope}/act_fn", "Mul", [gate, _b.Node($"{scope}/act_fn", "Sigmoid", [gate])]);
            Value product = _b.Node(scope, "Mul", [act, up]);
            return Linear(product, $"{scope}/down_proj", $"{key}.down_proj", LinearWeight($"{key}.down_proj.weight", _c.Intermediate, _c.Hidden), _c.Intermediate, _c.Hidden);
        }

        /// <summary>Concatenates row-major [rows, cols_i] matrices along columns.</summary>
        private static float[] ConcatColumns(int rows, params (float[] Data, int Cols)[] parts)
        {
            int total = parts.Sum(p => p.Cols);
            var result = new float[rows * total];
            for (int r = 0; r < rows; r++)
            {
                int offset = 0;
                foreach ((float[] data, int cols) in parts)
                {
                    data.AsSpan(r * cols, cols).CopyTo(result.AsSpan((r * total) + offset, cols));
                    offset += cols;
                }
            }

            return result;
        }
    }
}
