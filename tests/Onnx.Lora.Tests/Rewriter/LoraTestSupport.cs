using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>Reference math and ORT helpers for the rewriter tests, independent of the code under test.</summary>
internal static class LoraTestSupport
{
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
            float[] a = TestArrays.Uniform((int)(m.InFeatures * m.Rank), seed + k++, scale);
            float[] b = TestArrays.Uniform((int)(m.Rank * m.OutFeatures), seed + k++, scale);
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
}
