using System.Globalization;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>
/// Builds a Llama decoder in the shape torch.onnx exports it (opset 17, standard ops only, optionally with a KV cache):
/// MatMul on pre-transposed [in, out] weights, decomposed RMSNorm (Pow, ReduceMean, Add, Sqrt, Div, Mul),
/// RoPE from cos/sin tables with Slice/Split/Concat, a causal mask combined with attention_mask, GQA by repeating
/// key/value heads, a SiLU MLP and logits. Nodes are named like torch's (<c>/model/layers.0/self_attn/q_proj/MatMul</c>).
/// </summary>
/// <remarks>
/// Without a cache (<see cref="LlamaConfig.KvCache"/> false): inputs <c>input_ids</c>, <c>attention_mask</c> int64
/// [batch_size, sequence_length]; output <c>logits</c> float [batch_size, sequence_length, vocab]. With a cache, as Optimum
/// exports a decoder with past: inputs <c>input_ids</c> and <c>position_ids</c> [batch_size, sequence_length],
/// <c>attention_mask</c> [batch_size, total_sequence_length] (past + new tokens) and per layer
/// <c>past_key_values.N.key/value</c> float [batch_size, kv_heads, past_sequence_length, head_dim]; outputs <c>logits</c>
/// and <c>present.N.key/value</c> [batch_size, kv_heads, total_sequence_length, head_dim] — the Concat of past and new
/// (rotated) keys/values along the sequence, before the GQA repeat. The causal mask rows start at the past length
/// (total − sequence). An empty past (past_sequence_length 0) gives the no-cache model's logits. Weights come from an <see cref="IWeightSource"/> under Hugging Face keys
/// (<c>model.layers.N.self_attn.q_proj.weight</c> in [in, out] layout, <c>lm_head.weight</c> [hidden, vocab] when untied).
/// </remarks>
public static class TorchLlamaBuilder
{
    private const float MaskValue = -1e9f;

    /// <summary>Builds the model with seeded random weights (<see cref="LlamaConfig.Seed"/>).</summary>
    public static Model Build(LlamaConfig config) => Build(config, new RandomWeightSource(config?.Seed ?? 0));

    /// <summary>Builds the model with weights from <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The config's sizes do not fit together.</exception>
    public static Model Build(LlamaConfig config, IWeightSource weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        return new Emitter(config, weights).Emit();
    }

    private sealed class Emitter(LlamaConfig c, IWeightSource weights)
    {
        private readonly GraphBuilder _b = new("main_graph", opset: 17);
        private ConstantCache _constants = null!;
        private int _anonymous = 100;
        private Value _one = null!;
        private Value _two = null!;
        private Value _eps = null!;

        public Model Emit()
        {
            _constants = new ConstantCache(_b);
            _one = Constant("const_1.0", 1f);
            _two = Constant("const_2.0", 2f);
            _eps = Constant("const_eps", c.RmsNormEps);

            Value ids = _b.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
            Value mask = _b.Input("attention_mask", DataType.Int64, "batch_size", c.KvCache ? "total_sequence_length" : "sequence_length");
            Value? positionIds = c.KvCache ? _b.Input("position_ids", DataType.Int64, "batch_size", "sequence_length") : null;
            var past = new List<(Value Key, Value Value)>();
            for (int layer = 0; c.KvCache && layer < c.Layers; layer++)
            {
                past.Add((PastInput($"past_key_values.{layer}.key"), PastInput($"past_key_values.{layer}.value")));
            }

            Value embedTable = _b.Weight(weights, "model.embed_tokens.weight", new("model.embed_tokens.weight", WeightRole.Embedding, [c.Vocab, c.Hidden]));
            Value x = _b.Node("/model/embed_tokens", "Gather", [embedTable, ids]);

            // Without a cache the positions are 0..seq-1, from the input's shape.
            Value shape = _b.Node("/model", "Shape", [ids]);
            Value seq = _b.Node("/model", "Gather", [shape, _constants.Int64Scalar("const_i1", 1)], [Attr.Int("axis", 0)]);
            Value positions = positionIds ?? _b.Node("/model", "Range", [_constants.Int64Scalar("const_i0", 0), seq, _constants.Int64Scalar("const_step", 1)]);

            (Value cos, Value sin) = RotaryInputs(positions, batched: positionIds is not null);
            Value attnBias = AttentionBias(seq, mask);
            var present = new List<(Value Key, Value Value)>();

            for (int layer = 0; layer < c.Layers; layer++)
            {
                string scope = $"/model/layers.{layer}";
                string key = $"model.layers.{layer}";
                Value h = RmsNorm(x, $"{scope}/input_layernorm", $"{key}.input_layernorm.weight");
                Value attn = Attention(h, layer, cos, sin, attnBias, c.KvCache ? past[layer] : null, present);
                x = _b.Node(scope, "Add", [x, attn]);
                h = RmsNorm(x, $"{scope}/post_attention_layernorm", $"{key}.post_attention_layernorm.weight");
                Value mlp = Mlp(h, layer);
                x = _b.Node(scope, "Add", [x, mlp]);
            }

            x = RmsNorm(x, "/model/norm", "model.norm.weight");
            Value lmHead = LmHead(embedTable);
            Value logits = _b.Node("/lm_head", "MatMul", [x, lmHead]);
            _b.Output(logits, "logits", DataType.Float, "batch_size", "sequence_length", c.Vocab);
            for (int layer = 0; layer < present.Count; layer++)
            {
                _b.Output(present[layer].Key, $"present.{layer}.key", DataType.Float, "batch_size", c.KvHeads, "total_sequence_length", c.HeadDim);
                _b.Output(present[layer].Value, $"present.{layer}.value", DataType.Float, "batch_size", c.KvHeads, "total_sequence_length", c.HeadDim);
            }

            // The rotary tables end here; training (seq_length) and generation (context) check against it up front.
            _b.Model.MetadataProps.Add(new(ModelMetadataKeys.MaxPositions, c.MaxPositions.ToString(CultureInfo.InvariantCulture)));
            return _b.Model;
        }

        private Value PastInput(string name) => _b.Input(name, DataType.Float, "batch_size", c.KvHeads, "past_sequence_length", c.HeadDim);

        private Value LmHead(Value embedTable)
        {
            string name = c.Naming == InitializerNaming.Named ? "lm_head.weight" : NextAnonymous();
            if (!c.TiedEmbeddings)
            {
                return _b.Weight(weights, name, new("lm_head.weight", WeightRole.Linear, [c.Hidden, c.Vocab]));
            }

            // torch.onnx exports a tied classifier as its own pre-transposed initializer; so do we.
            float[] table = embedTable.Initializer!.ToFloat32();
            return _b.Floats(name, [c.Hidden, c.Vocab], BuilderHelpers.Transpose(table, c.Vocab, c.Hidden));
        }

        private string NextAnonymous() => "onnx::MatMul_" + (_anonymous++).ToString(CultureInfo.InvariantCulture);

        private Value Linear(Value x, string scope, string key, int inFeatures, int outFeatures)
        {
            string name = c.Naming == InitializerNaming.Named ? key : NextAnonymous();
            Value w = _b.Weight(weights, name, new(key, WeightRole.Linear, [inFeatures, outFeatures]));
            return _b.Node(scope, "MatMul", [x, w]);
        }

        private Value RmsNorm(Value x, string scope, string weightKey)
        {
            Value gamma = _b.Weight(weights, weightKey, new(weightKey, WeightRole.NormScale, [c.Hidden]));
            Value pow = _b.Node(scope, "Pow", [x, _two]);
            Value mean = _b.Node(scope, "ReduceMean", [pow], [Attr.Ints("axes", -1), Attr.Int("keepdims", 1)]);
            Value add = _b.Node(scope, "Add", [mean, _eps]);
            Value sqrt = _b.Node(scope, "Sqrt", [add]);
            Value inv = _b.Node(scope, "Div", [_one, sqrt]);
            Value normed = _b.Node(scope, "Mul", [x, inv]);
            return _b.Node(scope, "Mul", [gamma, normed]);
        }

        /// <summary>cos/sin rows for <paramref name="positions"/>: [seq] from Range, or [batch, seq] from position_ids.</summary>
        private (Value Cos, Value Sin) RotaryInputs(Value positions, bool batched)
        {
            bool interleaved = c.Rope == RopeStyle.Interleaved;
            (float[] cosTable, float[] sinTable, int width) = BuilderHelpers.RotaryTables(c.MaxPositions, c.HeadDim, c.RopeTheta, duplicate: !interleaved);
            Value cosCache = _b.Floats("cos_cached", [c.MaxPositions, width], cosTable);
            Value sinCache = _b.Floats("sin_cached", [c.MaxPositions, width], sinTable);
            Value cos = _b.Node("/model/rotary_emb", "Gather", [cosCache, positions]);
            Value sin = _b.Node("/model/rotary_emb", "Gather", [sinCache, positions]);

            // Interleaved: [s, d/2] -> [1, s, 1, d/2, 1] against q as [b, s, h, d/2, 2].
            // Rotate-half: [s, d] -> [1, 1, s, d] against q as [b, h, s, d].
            // From position_ids the batch axis is already there: [b, s, d/2] -> [b, s, 1, d/2, 1]; [b, s, d] -> [b, 1, s, d].
            Value axes = (interleaved, batched) switch
            {
                (true, false) => Shape("rope_unsq_axes", 0, 2, 4),
                (true, true) => Shape("rope_unsq_axes", 2, 4),
                (false, false) => Shape("rope_unsq_axes", 0, 1),
                (false, true) => Shape("rope_unsq_axes", 1),
            };
            return (_b.Node("/model/rotary_emb", "Unsqueeze", [cos, axes]), _b.Node("/model/rotary_emb", "Unsqueeze", [sin, axes]));
        }

        private Value AttentionBias(Value seq, Value mask)
        {
            var causal = new float[(long)c.MaxPositions * c.MaxPositions];
            for (int i = 0; i < c.MaxPositions; i++)
            {
                for (int j = i + 1; j < c.MaxPositions; j++)
                {
                    causal[((long)i * c.MaxPositions) + j] = MaskValue;
                }
            }

            Value causalMask = _b.Floats("causal_mask", [c.MaxPositions, c.MaxPositions], causal);
            Value seq1 = _b.Node("/model", "Unsqueeze", [seq, Shape("const_axis0", 0)]);
            Value square;
            if (c.KvCache)
            {
                // Query i sits at absolute position past + i and sees keys 0..past+i: rows past..total-1, columns 0..total-1.
                Value total = _b.Node("/model", "Gather", [_b.Node("/model", "Shape", [mask]), _constants.Int64Scalar("const_i1", 1)], [Attr.Int("axis", 0)]);
                Value total1 = _b.Node("/model", "Unsqueeze", [total, Shape("const_axis0", 0)]);
                Value past1 = _b.Node("/model", "Sub", [total1, seq1]);
                Value starts = _b.Node("/model", "Concat", [past1, Shape("const_zero_1", 0)], [Attr.Int("axis", 0)]);
                Value ends = _b.Node("/model", "Concat", [total1, total1], [Attr.Int("axis", 0)]);
                square = _b.Node("/model", "Slice", [causalMask, starts, ends, Shape("const_axes_0_1", 0, 1)]);
            }
            else
            {
                Value ends = _b.Node("/model", "Concat", [seq1, seq1], [Attr.Int("axis", 0)]);
                square = _b.Node("/model", "Slice", [causalMask, Shape("const_zero_2", 0, 0), ends, Shape("const_axes_0_1", 0, 1)]);
            }

            // Padding: (1 - mask) * -1e9, broadcast over heads and query positions as [b, 1, 1, s].
            Value maskF = _b.Node("/model", "Cast", [mask], [Attr.Int("to", (long)DataType.Float)]);
            Value inverted = _b.Node("/model", "Sub", [_one, maskF]);
            Value padding = _b.Node("/model", "Mul", [inverted, Constant("const_neg", MaskValue)]);
            Value padding4 = _b.Node("/model", "Unsqueeze", [padding, Shape("const_axes_1_2", 1, 2)]);
            return _b.Node("/model", "Add", [square, padding4]);
        }

        private Value Attention(Value h, int layer, Value cos, Value sin, Value bias, (Value Key, Value Value)? past, List<(Value Key, Value Value)> present)
        {
            string scope = $"/model/layers.{layer}/self_attn";
            string key = $"model.layers.{layer}.self_attn";
            Value q = Linear(h, $"{scope}/q_proj", $"{key}.q_proj.weight", c.Hidden, c.Hidden);
            Value k = Linear(h, $"{scope}/k_proj", $"{key}.k_proj.weight", c.Hidden, c.KvDim);
            Value v = Linear(h, $"{scope}/v_proj", $"{key}.v_proj.weight", c.Hidden, c.KvDim);

            q = Rotate(q, c.Heads, scope, "rotary_q", cos, sin);
            k = Rotate(k, c.KvHeads, scope, "rotary_k", cos, sin);
            v = _b.Node(scope, "Reshape", [v, Shape4(c.KvHeads)]);
            if (c.Rope == RopeStyle.Interleaved)
            {
                // torch exports rotate in [b, s, h, d] here and transpose q, k, v to [b, h, s, d] afterwards.
                q = _b.Node(scope, "Transpose", [q], [Attr.Ints("perm", 0, 2, 1, 3)]);
                k = _b.Node(scope, "Transpose", [k], [Attr.Ints("perm", 0, 2, 1, 3)]);
            }

            v = _b.Node(scope, "Transpose", [v], [Attr.Ints("perm", 0, 2, 1, 3)]);

            if (past is { } cache)
            {
                // present = past ++ new along the sequence axis, with kv_heads heads (before the GQA repeat).
                k = _b.Node(scope, "Concat", [cache.Key, k], [Attr.Int("axis", 2)]);
                v = _b.Node(scope, "Concat", [cache.Value, v], [Attr.Int("axis", 2)]);
                present.Add((k, v));
            }

            if (c.KvHeads != c.Heads)
            {
                k = RepeatKv(k, $"{scope}/repeat_kv");
                v = RepeatKv(v, $"{scope}/repeat_kv_1");
            }

            Value kT = _b.Node(scope, "Transpose", [k], [Attr.Ints("perm", 0, 1, 3, 2)]);
            Value scores = _b.Node(scope, "MatMul", [q, kT]);
            scores = _b.Node(scope, "Div", [scores, Constant("const_scale", MathF.Sqrt(c.HeadDim))]);
            scores = _b.Node(scope, "Add", [scores, bias]);
            Value probs = _b.Node(scope, "Softmax", [scores], [Attr.Int("axis", -1)]);
            Value context = _b.Node(scope, "MatMul", [probs, v]);
            context = _b.Node(scope, "Transpose", [context], [Attr.Ints("perm", 0, 2, 1, 3)]);
            context = _b.Node(scope, "Reshape", [context, Shape("shape_merge", 0, 0, c.Hidden)]);
            return Linear(context, $"{scope}/o_proj", $"{key}.o_proj.weight", c.Hidden, c.Hidden);
        }

        /// <summary>[b, s, heads*d] -> rotated [b, s, heads, d] (interleaved) or [b, heads, s, d] (rotate-half).</summary>
        private Value Rotate(Value x, int heads, string attnScope, string rotaryName, Value cos, Value sin)
        {
            string scope = $"{attnScope}/{rotaryName}";
            if (c.Rope == RopeStyle.Interleaved)
            {
                Value pairs = _b.Node(scope, "Reshape", [x, Shape($"shape_pairs_{heads}", 0, 0, heads, c.HeadDim / 2, 2)]);
                IReadOnlyList<Value> parts = _b.OpMulti("Split", [pairs, Shape("split_2", 1, 1)], 2, [Attr.Int("axis", -1)], name: $"{scope}/Split");
                Value even = parts[0];
                Value odd = parts[1];
                Value real = _b.Node(scope, "Sub", [_b.Node(scope, "Mul", [even, cos]), _b.Node(scope, "Mul", [odd, sin])]);
                Value imag = _b.Node(scope, "Add", [_b.Node(scope, "Mul", [even, sin]), _b.Node(scope, "Mul", [odd, cos])]);
                Value joined = _b.Node(scope, "Concat", [real, imag], [Attr.Int("axis", -1)]);
                return _b.Node(scope, "Reshape", [joined, Shape4(heads)]);
            }

            // HF order: view and transpose in the attention scope, then apply_rotary_pos_emb.
            Value split = _b.Node(attnScope, "Reshape", [x, Shape4(heads)]);
            Value t = _b.Node(attnScope, "Transpose", [split], [Attr.Ints("perm", 0, 2, 1, 3)]);
            int half = c.HeadDim / 2;
            Value axis = Shape("const_axis_last", -1);
            Value first = _b.Node(scope, "Slice", [t, Shape("const_start_0", 0), Shape($"const_half_{half}", half), axis]);
            Value second = _b.Node(scope, "Slice", [t, Shape($"const_half_{half}", half), Shape("const_end_max", long.MaxValue), axis]);
            Value rotated = _b.Node(scope, "Concat", [_b.Node(scope, "Neg", [second]), first], [Attr.Int("axis", -1)]);
            return _b.Node(scope, "Add", [_b.Node(scope, "Mul", [t, cos]), _b.Node(scope, "Mul", [rotated, sin])]);
        }

        /// <summary>[b, kv, s, d] -> [b, heads, s, d] by repeating each kv head heads/kv times (as HF's repeat_kv).</summary>
        private Value RepeatKv(Value x, string scope)
        {
            Value unsqueezed = _b.Node(scope, "Unsqueeze", [x, Shape("const_axis_2", 2)]);
            Value expanded = _b.Node(scope, "Expand", [unsqueezed, Shape("expand_rep", 1, 1, c.Heads / c.KvHeads, 1, 1)]);
            return _b.Node(scope, "Reshape", [expanded, Shape("shape_rep", 0, c.Heads, -1, c.HeadDim)]);
        }

        private Value Mlp(Value h, int layer)
        {
            string scope = $"/model/layers.{layer}/mlp";
            string key = $"model.layers.{layer}.mlp";
            Value gate = Linear(h, $"{scope}/gate_proj", $"{key}.gate_proj.weight", c.Hidden, c.Intermediate);
            Value act = _b.Node($"{scope}/act_fn", "Mul", [gate, _b.Node($"{scope}/act_fn", "Sigmoid", [gate])]);
            Value up = Linear(h, $"{scope}/up_proj", $"{key}.up_proj.weight", c.Hidden, c.Intermediate);
            Value product = _b.Node(scope, "Mul", [act, up]);
            return Linear(product, $"{scope}/down_proj", $"{key}.down_proj.weight", c.Intermediate, c.Hidden);
        }

        private Value Shape4(int heads) => Shape($"shape_heads_{heads}", 0, 0, heads, c.HeadDim);

        private Value Shape(string name, params long[] values) => _constants.Int64s(name, values);

        private Value Constant(string name, float scalar) => _constants.Float(name, scalar);
    }
}
