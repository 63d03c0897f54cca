using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>Tolerances of the rewriter tests, stated once.</summary>
internal static class Tolerances
{
    /// <summary>B = 0: the branch adds exact zeros, so fp32 outputs must match to this (max abs diff).</summary>
    public const float ZeroAdapterAbs = 1e-6f;

    /// <summary>LoRA model vs base with W + s·A·B, fp32 (max abs diff / max abs of the reference).</summary>
    public const float MergedRelFp32 = 1e-4f;

    /// <summary>The same for fp16 bases: the reference rounds W + s·A·B to fp16, the branch rounds x·A and x·A·B.</summary>
    public const float MergedRelFp16 = 5e-3f;
}

/// <summary>Reference math and ORT helpers for the rewriter tests, independent of the code under test.</summary>
internal static class LoraTestSupport
{
    /// <summary>Seeded uniform values in [-scale, scale].</summary>
    public static float[] Random(int count, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
    }

    /// <summary>W [in,out] + s·A [in,r]·B [r,out], in double.</summary>
    public static float[] AddDelta(float[] w, float[] a, float[] b, int inF, int outF, int r, double s)
    {
        var result = new float[w.Length];
        for (int i = 0; i < inF; i++)
        {
            for (int o = 0; o < outF; o++)
            {
                double acc = 0;
                for (int k = 0; k < r; k++)
                {
                    acc += (double)a[i * r + k] * b[k * outF + o];
                }

                result[i * outF + o] = (float)(w[i * outF + o] + s * acc);
            }
        }

        return result;
    }

    public static float[] Transpose(float[] m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                t[c * rows + r] = m[r * cols + c];
            }
        }

        return t;
    }

    /// <summary>Sets every LoRA A and B of <paramref name="model"/> to seeded random values (float32 initializers).</summary>
    public static Dictionary<string, (float[] A, float[] B)> RandomizeAdapters(Model model, LoraManifest manifest, int seed, float scale = 0.5f)
    {
        var values = new Dictionary<string, (float[] A, float[] B)>();
        int k = 0;
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            float[] a = Random((int)(m.InFeatures * m.Rank), seed + k++, scale);
            float[] b = Random((int)(m.Rank * m.OutFeatures), seed + k++, scale);
            model.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, m.Rank], a));
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], b));
            values[m.Module] = (a, b);
        }

        return values;
    }

    /// <summary>Writes W + s·A·B into the base weight of each module of <paramref name="baseModel"/> (layout InOut or OutIn), in its dtype.</summary>
    public static void MergeIntoBase(Model baseModel, LoraManifest manifest, Dictionary<string, (float[] A, float[] B)> adapters)
    {
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            Onnx.Lora.Ir.Tensor stored = baseModel.Graph.Initializers[m.BaseWeight].Initializer!;
            float[] w = stored.ToFloat32();
            int inF = (int)m.InFeatures, outF = (int)m.OutFeatures;
            double s = m.UseRsLora ? m.Alpha / Math.Sqrt(m.Rank) : m.Alpha / m.Rank;
            bool outIn = m.Layout == WeightLayout.OutIn;
            float[] inOut = outIn ? Transpose(w, outF, inF) : w;
            float[] merged = AddDelta(inOut, adapters[m.Module].A, adapters[m.Module].B, inF, outF, m.Rank, s);
            float[] back = outIn ? Transpose(merged, inF, outF) : merged;
            baseModel.Graph.Initializers.SetData(m.BaseWeight, new InMemoryTensor(m.BaseWeight, stored.DataType, stored.Dims, TensorConvert.FromFloat32(back, stored.DataType)));
        }
    }

    public static string Save(Model model, TempDir dir, string name)
    {
        string path = dir.File(name);
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        return path;
    }

    /// <summary>max |a − b| / max |b| over every output.</summary>
    public static float RelativeError(Dictionary<string, float[]> actual, Dictionary<string, float[]> expected)
    {
        float worst = 0;
        foreach ((string name, float[] e) in expected)
        {
            float scale = e.Max(MathF.Abs);
            float diff = OrtRunner.MaxAbsDiff(actual[name], e);
            worst = MathF.Max(worst, diff / MathF.Max(scale, 1e-12f));
        }

        return worst;
    }

    public static float MaxAbsDiff(Dictionary<string, float[]> actual, Dictionary<string, float[]> expected)
    {
        CollectionAssert.AreEquivalent(expected.Keys.ToArray(), actual.Keys.ToArray());
        return expected.Max(kv => OrtRunner.MaxAbsDiff(actual[kv.Key], kv.Value));
    }

    /// <summary>Runs a model with OrtRunner's generated inputs plus <paramref name="extra"/> float32 feeds (e.g. adapter slots).</summary>
    public static Dictionary<string, float[]> RunWithFeeds(string modelPath, IReadOnlyDictionary<string, (float[] Data, int[] Dims)> extra, int seed = 20261125)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        using var session = new InferenceSession(modelPath, options);
        var inputs = OrtRunner.MakeInputs(session, seed, null).Where(kv => !extra.ContainsKey(kv.Key)).Select(kv => kv.Value).ToList();
        inputs.AddRange(extra.Select(kv => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<float>(kv.Value.Data, kv.Value.Dims))));
        using var results = session.Run(inputs);
        return results.ToDictionary(r => r.Name, OrtRunner.ToFloats);
    }
}
