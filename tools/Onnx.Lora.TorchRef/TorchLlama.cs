using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Onnx.Lora.TorchRef;

/// <summary>One LoRA-adapted linear: y = x·W + scaling·(x·A)·B, A [in, r], B [r, out] (MatMul layout, as in ONNX).</summary>
internal sealed class TorchLoraLinear : IDisposable
{
    public TorchLoraLinear(string module, Tensor a, Tensor b, double scaling, string aName, string bName)
    {
        Module = module;
        A = new Parameter(a, requires_grad: true);
        B = new Parameter(b, requires_grad: true);
        Scaling = scaling;
        AName = aName;
        BName = bName;
    }

    public string Module { get; }
    public Parameter A { get; }
    public Parameter B { get; }
    public double Scaling { get; }
    public string AName { get; }
    public string BName { get; }

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}

/// <summary>
/// The torch-style Llama of <see cref="LlamaGraphFacts"/> written directly in libtorch ops (TorchSharp): frozen
/// weights are plain tensors without gradients, only LoRA A/B are <see cref="Parameter"/>s. The math follows the
/// graph op for op (RMSNorm as x·(1/sqrt(mean(x²)+eps))·γ, interleaved-pair RoPE from the graph's cos/sin tables,
/// additive causal + padding mask, GQA by repeating kv heads, SiLU MLP, classifier MatMul) so logits agree with
/// ORT to float rounding.
/// </summary>
internal sealed class TorchLlama : IDisposable
{
    private readonly LlamaGraphFacts _facts;
    private readonly Tensor _embedding;
    private readonly Tensor _causal;
    private readonly Tensor _cos;
    private readonly Tensor _sin;
    private readonly Dictionary<string, Tensor> _weights = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _norms = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TorchLoraLinear> _lora = new(StringComparer.Ordinal);

    public TorchLlama(LlamaGraphFacts facts, bool useSdpa)
    {
        _facts = facts;
        UseSdpa = useSdpa;
        _embedding = Frozen(facts.Embedding, facts.Vocab, facts.Hidden);
        _causal = Frozen(facts.CausalMask, facts.MaxPositions, facts.MaxPositions);
        _cos = Frozen(facts.CosTable, facts.MaxPositions, facts.RopeWidth);
        _sin = Frozen(facts.SinTable, facts.MaxPositions, facts.RopeWidth);
        foreach (LinearWeight w in facts.Linears.Values)
        {
            _weights[w.Module] = Frozen(w.Data, w.In, w.Out);
        }

        foreach ((string module, float[] gamma) in facts.Norms)
        {
            _norms[module] = Frozen(gamma, gamma.Length);
        }

        if (facts.Manifest is { } manifest)
        {
            foreach (var m in manifest.Modules)
            {
                if (!_weights.ContainsKey(m.Module))
                {
                    throw new Onnx.Lora.Ir.GraphValidationException($"LoRA module '{m.Module}' (target node '{m.TargetNode}') has no frozen MatMul weight in the graph.");
                }

                Tensor a = tensor(facts.LoraInitial[m.LoraA], [m.InFeatures, m.Rank], ScalarType.Float32);
                Tensor b = tensor(facts.LoraInitial[m.LoraB], [m.Rank, m.OutFeatures], ScalarType.Float32);
                _lora[m.Module] = new TorchLoraLinear(m.Module, a, b, m.Scaling, m.LoraA, m.LoraB);
            }
        }
    }

    /// <summary>Attention through F.scaled_dot_product_attention (what a TorchSharp user would write) instead of explicit ops.</summary>
    public bool UseSdpa { get; }

    public IReadOnlyCollection<TorchLoraLinear> Lora => _lora.Values;

    public IEnumerable<Parameter> Parameters() => _lora.Values.SelectMany(l => new[] { l.A, l.B });

    /// <summary>Logits [batch, seq, vocab] for <paramref name="ids"/> and <paramref name="mask"/> (int64 [batch, seq]).</summary>
    public Tensor Forward(Tensor ids, Tensor mask)
    {
        long batch = ids.shape[0];
        long seq = ids.shape[1];
        int hidden = _facts.Hidden;
        int heads = _facts.Heads;
        int kvHeads = _facts.KvHeads;
        int headDim = _facts.HeadDim;

        Tensor h = _embedding.index_select(0, ids.reshape(-1)).view(batch, seq, hidden);

        // Additive bias [b, 1, s, s]: causal part from the graph's own table, padding as (1 - mask)·value.
        Tensor causal = _causal.narrow(0, 0, seq).narrow(1, 0, seq);
        Tensor padding = (1.0f - mask.to_type(ScalarType.Float32)) * _facts.PaddingMaskValue;
        Tensor bias = causal + padding.view(batch, 1, 1, seq);

        // RoPE tables as [1, s, 1, d/2, 1] against q viewed as [b, s, h, d/2, 2].
        Tensor cos = _cos.narrow(0, 0, seq).view(1, seq, 1, _facts.RopeWidth, 1);
        Tensor sin = _sin.narrow(0, 0, seq).view(1, seq, 1, _facts.RopeWidth, 1);

        for (int layer = 0; layer < _facts.Layers; layer++)
        {
            string p = $"model.layers.{layer}";
            Tensor x = RmsNorm(h, $"{p}.input_layernorm");
            Tensor q = Rope(Linear(x, $"{p}.self_attn.q_proj").view(batch, seq, heads, headDim / 2, 2), cos, sin).view(batch, seq, heads, headDim).transpose(1, 2);
            Tensor k = Rope(Linear(x, $"{p}.self_attn.k_proj").view(batch, seq, kvHeads, headDim / 2, 2), cos, sin).view(batch, seq, kvHeads, headDim).transpose(1, 2);
            Tensor v = Linear(x, $"{p}.self_attn.v_proj").view(batch, seq, kvHeads, headDim).transpose(1, 2);
            k = RepeatKv(k, heads / kvHeads);
            v = RepeatKv(v, heads / kvHeads);

            Tensor attn;
            if (UseSdpa)
            {
                attn = F.scaled_dot_product_attention(q, k, v, bias);
            }
            else
            {
                Tensor scores = q.matmul(k.transpose(2, 3)) / _facts.AttentionDivisor + bias;
                attn = scores.softmax(-1).matmul(v);
            }

            h = h + Linear(attn.transpose(1, 2).reshape(batch, seq, hidden), $"{p}.self_attn.o_proj");
            x = RmsNorm(h, $"{p}.post_attention_layernorm");
            Tensor gate = Linear(x, $"{p}.mlp.gate_proj");
            h = h + Linear(gate * gate.sigmoid() * Linear(x, $"{p}.mlp.up_proj"), $"{p}.mlp.down_proj");
        }

        return Linear(RmsNorm(h, "model.norm"), "lm_head");
    }

    /// <summary>
    /// Causal-LM loss: logits at position t predict labels at t+1; labels equal to -100 are not counted; mean over the
    /// counted tokens (torch's cross_entropy with ignore_index=-100, reduction='mean').
    /// </summary>
    public static Tensor CausalLmLoss(Tensor logits, Tensor labels)
    {
        long vocab = logits.shape[2];
        long seq = logits.shape[1];
        Tensor shiftedLogits = logits.narrow(1, 0, seq - 1).reshape(-1, vocab);
        Tensor shiftedLabels = labels.narrow(1, 1, seq - 1).reshape(-1);
        return F.cross_entropy(shiftedLogits, shiftedLabels, ignore_index: -100, reduction: nn.Reduction.Mean);
    }

    public void Dispose()
    {
        _embedding.Dispose();
        _causal.Dispose();
        _cos.Dispose();
        _sin.Dispose();
        foreach (Tensor t in _weights.Values.Concat(_norms.Values))
        {
            t.Dispose();
        }

        foreach (TorchLoraLinear l in _lora.Values)
        {
            l.Dispose();
        }
    }

    private Tensor Linear(Tensor x, string module)
    {
        Tensor y = x.matmul(_weights[module]);
        if (_lora.TryGetValue(module, out TorchLoraLinear? lora))
        {
            y = y + (x.matmul(lora.A).matmul(lora.B) * lora.Scaling);
        }

        return y;
    }

    private Tensor RmsNorm(Tensor x, string module)
    {
        Tensor inv = 1.0f / (x.pow(2).mean([-1L], keepdim: true) + _facts.Eps).sqrt();
        return _norms[module] * (x * inv);
    }

    private static Tensor Rope(Tensor x, Tensor cos, Tensor sin)
    {
        // x: [b, s, h, d/2, 2]; rotate each pair (x0, x1) by the position's angle, as llama2.c does.
        Tensor x0 = x.narrow(-1, 0, 1);
        Tensor x1 = x.narrow(-1, 1, 1);
        return cat([(x0 * cos) - (x1 * sin), (x0 * sin) + (x1 * cos)], -1);
    }

    private static Tensor RepeatKv(Tensor x, int repeats)
    {
        if (repeats == 1)
        {
            return x;
        }

        long b = x.shape[0], kv = x.shape[1], s = x.shape[2], d = x.shape[3];
        return x.unsqueeze(2).expand(b, kv, repeats, s, d).reshape(b, kv * repeats, s, d);
    }

    private static Tensor Frozen(float[] data, params long[] dims) => tensor(data, dims, ScalarType.Float32);
}
