using Onnx.Lora.Models.Builders;

namespace Onnx.Lora.Tests.Models;

/// <summary>
/// Plain C# (double-precision) forward passes of one-block GPT-2 and BERT, written from the papers' formulas, to
/// check the builders' graphs against something that shares no code with them (only the weight values).
/// </summary>
internal static partial class ReferenceForward
{
    public static double[] Gpt2Logits(Gpt2Config c, IWeightSource w, long[] ids)
    {
        int s = ids.Length;
        double[] wte = Get(w, "transformer.wte.weight", WeightRole.Embedding, c.Vocab, c.Hidden);
        double[] wpe = Get(w, "transformer.wpe.weight", WeightRole.Embedding, c.MaxPositions, c.Hidden);
        var x = new double[s * c.Hidden];
        for (int t = 0; t < s; t++)
        {
            for (int j = 0; j < c.Hidden; j++)
            {
                x[(t * c.Hidden) + j] = wte[(ids[t] * c.Hidden) + j] + wpe[(t * c.Hidden) + j];
            }
        }

        for (int l = 0; l < c.Layers; l++)
        {
            string key = $"transformer.h.{l}";
            double[] h = LayerNorm(x, s, c.Hidden, w, $"{key}.ln_1", c.LayerNormEps);
            double[] qkv = Linear(h, s, w, $"{key}.attn.c_attn", c.Hidden, 3 * c.Hidden);
            double[] ctx = Attention(qkv, 3 * c.Hidden, 0, c.Hidden, 2 * c.Hidden, s, c.Heads, c.HeadDim, causal: true, valid: null);
            Add(x, Linear(ctx, s, w, $"{key}.attn.c_proj", c.Hidden, c.Hidden));
            h = LayerNorm(x, s, c.Hidden, w, $"{key}.ln_2", c.LayerNormEps);
            double[] fc = Linear(h, s, w, $"{key}.mlp.c_fc", c.Hidden, c.Intermediate);
            Add(x, Linear(fc.Select(Gelu).ToArray(), s, w, $"{key}.mlp.c_proj", c.Intermediate, c.Hidden));
        }

        x = LayerNorm(x, s, c.Hidden, w, "transformer.ln_f", c.LayerNormEps);
        var logits = new double[s * c.Vocab];
        for (int t = 0; t < s; t++)
        {
            for (int v = 0; v < c.Vocab; v++)
            {
                double sum = 0;
                for (int j = 0; j < c.Hidden; j++)
                {
                    sum += x[(t * c.Hidden) + j] * wte[(v * c.Hidden) + j];
                }

                logits[(t * c.Vocab) + v] = sum;
            }
        }

        return logits;
    }

    public static double[] BertLogits(BertConfig c, IWeightSource w, long[] ids, long[] types, long[] mask)
    {
        int s = ids.Length;
        double[] words = Get(w, "bert.embeddings.word_embeddings.weight", WeightRole.Embedding, c.Vocab, c.Hidden);
        double[] pos = Get(w, "bert.embeddings.position_embeddings.weight", WeightRole.Embedding, c.MaxPositions, c.Hidden);
        double[] typ = Get(w, "bert.embeddings.token_type_embeddings.weight", WeightRole.Embedding, c.TypeVocab, c.Hidden);
        var x = new double[s * c.Hidden];
        for (int t = 0; t < s; t++)
        {
            for (int j = 0; j < c.Hidden; j++)
            {
                x[(t * c.Hidden) + j] = words[(ids[t] * c.Hidden) + j] + pos[(t * c.Hidden) + j] + typ[(types[t] * c.Hidden) + j];
            }
        }

        x = LayerNorm(x, s, c.Hidden, w, "bert.embeddings.LayerNorm", c.LayerNormEps);
        bool[] valid = mask.Select(m => m != 0).ToArray();
        for (int l = 0; l < c.Layers; l++)
        {
            string key = $"bert.encoder.layer.{l}";
            double[] q = Linear(x, s, w, $"{key}.attention.self.query", c.Hidden, c.Hidden);
            double[] k = Linear(x, s, w, $"{key}.attention.self.key", c.Hidden, c.Hidden);
            double[] v = Linear(x, s, w, $"{key}.attention.self.value", c.Hidden, c.Hidden);
            double[] qkv = new double[s * 3 * c.Hidden];
            for (int t = 0; t < s; t++)
            {
                Array.Copy(q, t * c.Hidden, qkv, t * 3 * c.Hidden, c.Hidden);
                Array.Copy(k, t * c.Hidden, qkv, (t * 3 * c.Hidden) + c.Hidden, c.Hidden);
                Array.Copy(v, t * c.Hidden, qkv, (t * 3 * c.Hidden) + (2 * c.Hidden), c.Hidden);
            }

            double[] ctx = Attention(qkv, 3 * c.Hidden, 0, c.Hidden, 2 * c.Hidden, s, c.Heads, c.HeadDim, causal: false, valid);
            double[] attn = Linear(ctx, s, w, $"{key}.attention.output.dense", c.Hidden, c.Hidden);
            Add(attn, x);
            x = LayerNorm(attn, s, c.Hidden, w, $"{key}.attention.output.LayerNorm", c.LayerNormEps);
            double[] inter = Linear(x, s, w, $"{key}.intermediate.dense", c.Hidden, c.Intermediate).Select(Gelu).ToArray();
            double[] output = Linear(inter, s, w, $"{key}.output.dense", c.Intermediate, c.Hidden);
            Add(output, x);
            x = LayerNorm(output, s, c.Hidden, w, $"{key}.output.LayerNorm", c.LayerNormEps);
        }

        double[] pooled = Linear(x[..c.Hidden], 1, w, "bert.pooler.dense", c.Hidden, c.Hidden).Select(Math.Tanh).ToArray();
        return Linear(pooled, 1, w, "classifier", c.Hidden, c.NumLabels);
    }

    private static double[] Get(IWeightSource w, string key, WeightRole role, params long[] dims) =>
        w.Floats(new WeightRequest(key, role, dims)).Select(f => (double)f).ToArray();

    private static float[] Floats(this IWeightSource w, WeightRequest r) =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(w.GetFloat32(r).Span).ToArray();

    private static double[] Linear(double[] x, int rows, IWeightSource w, string key, int inF, int outF)
    {
        double[] weight = Get(w, $"{key}.weight", WeightRole.Linear, inF, outF);
        double[] bias = Get(w, $"{key}.bias", WeightRole.Bias, outF);
        var y = new double[rows * outF];
        for (int r = 0; r < rows; r++)
        {
            for (int o = 0; o < outF; o++)
            {
                double sum = bias[o];
                for (int i = 0; i < inF; i++)
                {
                    sum += x[(r * inF) + i] * weight[(i * outF) + o];
                }

                y[(r * outF) + o] = sum;
            }
        }

        return y;
    }

    private static double[] LayerNorm(double[] x, int rows, int hidden, IWeightSource w, string key, double eps)
    {
        double[] gamma = Get(w, $"{key}.weight", WeightRole.NormScale, hidden);
        double[] beta = Get(w, $"{key}.bias", WeightRole.Bias, hidden);
        var y = new double[x.Length];
        for (int r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * hidden, hidden);
            double mean = 0;
            foreach (double v in row)
            {
                mean += v / hidden;
            }

            double variance = 0;
            foreach (double v in row)
            {
                variance += (v - mean) * (v - mean) / hidden;
            }

            for (int j = 0; j < hidden; j++)
            {
                y[(r * hidden) + j] = ((row[j] - mean) / Math.Sqrt(variance + eps) * gamma[j]) + beta[j];
            }
        }

        return y;
    }

    /// <summary>softmax(q·kᵀ/√d + mask)·v per head; q, k, v are column blocks of rows of width <paramref name="stride"/>.</summary>
    private static double[] Attention(double[] qkv, int stride, int qOff, int kOff, int vOff, int s, int heads, int d, bool causal, bool[]? valid)
    {
        var ctx = new double[s * heads * d];
        var p = new double[s];
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < s; i++)
            {
                double max = double.NegativeInfinity;
                for (int j = 0; j < s; j++)
                {
                    bool allowed = (!causal || j <= i) && (valid is null || valid[j]);
                    double dot = 0;
                    for (int t = 0; t < d; t++)
                    {
                        dot += qkv[(i * stride) + qOff + (h * d) + t] * qkv[(j * stride) + kOff + (h * d) + t];
                    }

                    p[j] = allowed ? dot / Math.Sqrt(d) : double.NegativeInfinity;
                    max = Math.Max(max, p[j]);
                }

                double sum = 0;
                for (int j = 0; j < s; j++)
                {
                    p[j] = Math.Exp(p[j] - max);
                    sum += p[j];
                }

                for (int t = 0; t < d; t++)
                {
                    double acc = 0;
                    for (int j = 0; j < s; j++)
                    {
                        acc += p[j] / sum * qkv[(j * stride) + vOff + (h * d) + t];
                    }

                    ctx[(i * heads * d) + (h * d) + t] = acc;
                }
            }
        }

        return ctx;
    }

    private static void Add(double[] target, double[] other)
    {
        for (int i = 0; i < target.Length; i++)
        {
            target[i] += other[i];
        }
    }

    private static double Gelu(double x) => 0.5 * x * (1 + Erf(x / Math.Sqrt(2)));

    /// <summary>erf by its Maclaurin series (|x| small) or continued-fraction-free asymptotic complement; |error| &lt; 1e-12 for |x| ≤ 6.</summary>
    private static double Erf(double x)
    {
        if (Math.Abs(x) > 6)
        {
            return Math.Sign(x);
        }

        // Series: erf(x) = 2/√π · Σ (−1)^n x^(2n+1) / (n! (2n+1)); converges for all x, enough terms for |x| ≤ 6.
        double sum = 0;
        double term = x;
        for (int n = 0; n < 200; n++)
        {
            sum += term / ((2 * n) + 1);
            term *= -x * x / (n + 1);
            if (Math.Abs(term) < 1e-17)
            {
                break;
            }
        }

        return 2 / Math.Sqrt(Math.PI) * sum;
    }
}
