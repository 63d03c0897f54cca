using Onnx.Lora.Models.Builders;

namespace Onnx.Lora.Tests.Models;

/// <summary>A plain double-precision BART-style encoder-decoder, written from the model's definition, not from the builder's graph.</summary>
internal static partial class ReferenceForward
{
    /// <summary>The encoder's last hidden state [s, hidden] of one sequence.</summary>
    public static double[] BartEncoder(BartConfig c, IWeightSource w, long[] ids, long[] mask)
    {
        int s = ids.Length;
        double[] x = BartEmbed(c, w, ids, "encoder");
        bool[] valid = mask.Select(m => m != 0).ToArray();
        for (int l = 0; l < c.Layers; l++)
        {
            string key = $"model.encoder.layers.{l}";
            x = Residual(x, BartAttention(c, w, x, s, x, s, $"{key}.self_attn", causal: false, valid), s, c, w, $"{key}.self_attn_layer_norm");
            x = Residual(x, BartMlp(c, w, x, s, key), s, c, w, $"{key}.final_layer_norm");
        }

        return x;
    }

    /// <summary>The decoder's logits [t, vocab] of one sequence given the encoder's states [s, hidden].</summary>
    public static double[] BartDecoderLogits(BartConfig c, IWeightSource w, long[] ids, double[] encoderStates, long[] encoderMask)
    {
        int t = ids.Length, s = encoderMask.Length;
        double[] y = BartEmbed(c, w, ids, "decoder");
        bool[] valid = encoderMask.Select(m => m != 0).ToArray();
        for (int l = 0; l < c.Layers; l++)
        {
            string key = $"model.decoder.layers.{l}";
            y = Residual(y, BartAttention(c, w, y, t, y, t, $"{key}.self_attn", causal: true, null), t, c, w, $"{key}.self_attn_layer_norm");
            y = Residual(y, BartAttention(c, w, y, t, encoderStates, s, $"{key}.encoder_attn", causal: false, valid), t, c, w, $"{key}.encoder_attn_layer_norm");
            y = Residual(y, BartMlp(c, w, y, t, key), t, c, w, $"{key}.final_layer_norm");
        }

        double[] head = Get(w, "lm_head.weight", WeightRole.Linear, c.Hidden, c.Vocab);
        var logits = new double[t * c.Vocab];
        for (int r = 0; r < t; r++)
        {
            for (int v = 0; v < c.Vocab; v++)
            {
                double sum = 0;
                for (int j = 0; j < c.Hidden; j++)
                {
                    sum += y[(r * c.Hidden) + j] * head[(j * c.Vocab) + v];
                }

                logits[(r * c.Vocab) + v] = sum;
            }
        }

        return logits;
    }

    private static double[] BartEmbed(BartConfig c, IWeightSource w, long[] ids, string stack)
    {
        double[] tokens = Get(w, "model.shared.weight", WeightRole.Embedding, c.Vocab, c.Hidden);
        double[] positions = Get(w, $"model.{stack}.embed_positions.weight", WeightRole.Embedding, c.MaxPositions, c.Hidden);
        var x = new double[ids.Length * c.Hidden];
        for (int i = 0; i < ids.Length; i++)
        {
            for (int j = 0; j < c.Hidden; j++)
            {
                x[(i * c.Hidden) + j] = tokens[(ids[i] * c.Hidden) + j] + positions[(i * c.Hidden) + j];
            }
        }

        return LayerNorm(x, ids.Length, c.Hidden, w, $"model.{stack}.layernorm_embedding", c.LayerNormEps);
    }

    /// <summary>out_proj(softmax(q·kᵀ/√d + mask)·v) with q from <paramref name="query"/> and k, v from <paramref name="memory"/>.</summary>
    private static double[] BartAttention(BartConfig c, IWeightSource w, double[] query, int sq, double[] memory, int sk, string key, bool causal, bool[]? valid)
    {
        int h = c.Hidden, d = c.HeadDim;
        double[] q = Linear(query, sq, w, $"{key}.q_proj", h, h);
        double[] k = Linear(memory, sk, w, $"{key}.k_proj", h, h);
        double[] v = Linear(memory, sk, w, $"{key}.v_proj", h, h);
        var ctx = new double[sq * h];
        var p = new double[sk];
        for (int head = 0; head < c.Heads; head++)
        {
            for (int i = 0; i < sq; i++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < sk; j++)
                {
                    double dot = 0;
                    for (int e = 0; e < d; e++)
                    {
                        dot += q[(i * h) + (head * d) + e] * k[(j * h) + (head * d) + e];
                    }

                    bool allowed = (!causal || j <= i) && (valid is null || valid[j]);
                    p[j] = allowed ? dot / Math.Sqrt(d) : double.NegativeInfinity;
                    max = Math.Max(max, p[j]);
                }

                double sum = 0;
                for (int j = 0; j < sk; j++)
                {
                    p[j] = Math.Exp(p[j] - max);
                    sum += p[j];
                }

                for (int e = 0; e < d; e++)
                {
                    double acc = 0;
                    for (int j = 0; j < sk; j++)
                    {
                        acc += p[j] / sum * v[(j * h) + (head * d) + e];
                    }

                    ctx[(i * h) + (head * d) + e] = acc;
                }
            }
        }

        return Linear(ctx, sq, w, $"{key}.out_proj", h, h);
    }

    private static double[] BartMlp(BartConfig c, IWeightSource w, double[] x, int rows, string key) =>
        Linear(Linear(x, rows, w, $"{key}.fc1", c.Hidden, c.Intermediate).Select(Gelu).ToArray(), rows, w, $"{key}.fc2", c.Intermediate, c.Hidden);

    private static double[] Residual(double[] x, double[] branch, int rows, BartConfig c, IWeightSource w, string key)
    {
        double[] sum = (double[])x.Clone();
        Add(sum, branch);
        return LayerNorm(sum, rows, c.Hidden, w, key, c.LayerNormEps);
    }
}
