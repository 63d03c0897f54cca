using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// A hand-built LoRA model that follows the manifest contract (branch x·A·B·scale added to the target's output,
/// manifest in metadata), written before the rewriter landed. Kept for what the real rewriter does not write: a
/// run-time DoRA shape of its own, and serving slots that SHARE one rank dim ('lora_r', as other tools write them).
/// The real rewriter's branches are covered by RewriterMergeTests and ServingTests.
/// </summary>
internal static class LoraTestModels
{
    public sealed record Layer(string Module, string WeightName, WeightLayout Layout, int In, int Out);

    public static readonly Layer[] Layers =
    [
        new("model.layers.0.self_attn.qkv_proj", "qkv.weight", WeightLayout.InOut, 16, 48),
        new("model.layers.0.mlp.up_proj", "up.weight", WeightLayout.OutIn, 48, 24),
    ];

    /// <summary>x [n,16] → MatMul(W1 [16,48]) → Relu → Gemm(W2 [24,48], transB=1) → y [n,24].</summary>
    public static Model Base(DataType type = DataType.Float, int seed = 7)
    {
        var rng = new Random(seed);
        var b = new GraphBuilder("base");
        Value x = b.Input("x", type, "n", 16);
        Value w1 = b.Initializer(Weight(Layers[0].WeightName, [16, 48], type, rng));
        Value w2 = b.Initializer(Weight(Layers[1].WeightName, [24, 48], type, rng));
        Value h = b.MatMul(x, w1, name: "qkv_proj/MatMul");
        Value r = b.Op("Relu", [h], name: "act");
        Value y = b.Op("Gemm", [r, w2], [Attr.Int("transB", 1)], name: "up_proj/Gemm");
        b.Output(y, "y", type, "n", 24);
        return b.Model;
    }

    /// <summary>Random LoRA weights (B ≠ 0 so merged output differs from the base).</summary>
    public static LoraWeights RandomWeights(int rank, float alpha, int seed = 11, bool dora = false)
    {
        var rng = new Random(seed);
        return new LoraWeights(Layers.Select(l => new LoraModuleWeights(
            l.Module, l.In, l.Out, rank, Rand(l.In * rank, rng, 0.5f), Rand(rank * l.Out, rng, 0.5f), alpha / rank,
            dora ? Rand(l.Out, rng, 1f).Select(v => 1.5f + v).ToArray() : null)));
    }

    /// <summary>
    /// <see cref="RandomWeights"/> named as the rewriter discovers the layers of <see cref="Base"/> ("qkv_proj",
    /// "up_proj"), for merging an adapter file into the plain base.
    /// </summary>
    public static LoraWeights RandomWeightsForBase(int rank, float alpha, int seed = 11, bool dora = false) =>
        new(RandomWeights(rank, alpha, seed, dora).Modules.Select(m => m with { Module = m.Module.Split('.')[^1] }));

    /// <summary>The base plus LoRA branches as the rewriter writes them (training placement, or serving slots).</summary>
    public static Model WithLora(Model model, LoraWeights weights, LoraPlacement placement)
    {
        var b = new GraphBuilder(model);
        var infos = new List<LoraModuleInfo>();
        DataType type = model.Graph.Inputs[0].ElementType;
        foreach (Layer l in Layers)
        {
            LoraModuleWeights w = weights.Find(l.Module)!;
            Node target = model.Graph.Nodes.First(n => n.Inputs.Any(v => v?.Name == l.WeightName));
            Value x = target.Inputs[0]!, baseOut = target.Outputs[0];
            var consumers = baseOut.Uses.ToList();
            bool graphOutput = baseOut.IsGraphOutput;
            b.InsertionPoint = null;
            string aName = l.Module + ".lora_A.weight", bName = l.Module + ".lora_B.weight";
            Value a, bb;
            string? scaleName = null;
            if (placement == LoraPlacement.Initializers)
            {
                a = b.Floats(aName, [l.In, w.Rank], w.A);
                bb = b.Floats(bName, [w.Rank, l.Out], w.B);
            }
            else
            {
                a = b.Input(aName, DataType.Float, l.In, "lora_r");
                bb = b.Input(bName, DataType.Float, "lora_r", l.Out);
                model.Graph.Initializers.Add(a, InMemoryTensor.FromFloats(aName, [l.In, 0], []));
                model.Graph.Initializers.Add(bb, InMemoryTensor.FromFloats(bName, [0, l.Out], []));
            }

            Value xf = type == DataType.Float ? x : b.Cast(x, DataType.Float);
            Value d = b.MatMul(b.MatMul(xf, a), bb);
            if (placement == LoraPlacement.Initializers)
            {
                Value s = b.Scalar(l.Module + ".scale", w.Scale);
                scaleName = s.Name;
                d = b.Mul(d, s);
            }

            if (type != DataType.Float)
            {
                d = b.Cast(d, type);
            }

            Value sum = b.Add(baseOut, d);
            string? magName = null;
            if (w.Magnitude is { } mag)
            {
                // DoRA at run time: y = m / ‖W + sAB‖ (per output feature) ⊙ (x·W + s·x·A·B).
                Value m = b.Floats(l.Module + ".lora_magnitude_vector", [l.Out], mag);
                magName = m.Name;
                Value wv = model.Graph.Initializers[l.WeightName];
                Value wIo = l.Layout == WeightLayout.InOut ? wv : b.Transpose(wv, [1, 0]);
                Value ws = b.Add(wIo, b.Mul(b.MatMul(a, bb), model.Graph.Initializers[scaleName!]));
                Value norm = b.Op("ReduceL2", [ws], [Attr.Ints("axes", 0), Attr.Int("keepdims", 0)]);
                sum = b.Mul(sum, b.Div(m, norm));
            }

            foreach (Usage u in consumers)
            {
                u.Node.ReplaceInput(u.InputIndex, sum);
            }

            if (graphOutput)
            {
                model.Graph.Outputs[model.Graph.Outputs.IndexOf(baseOut)] = sum;
                string name = baseOut.Name;
                baseOut.Name = name + "_base";
                sum.Name = name;
                sum.Type = baseOut.Type;
            }

            infos.Add(new LoraModuleInfo
            {
                Module = l.Module, TargetNode = target.Name, BaseWeight = l.WeightName, Layout = l.Layout,
                InFeatures = l.In, OutFeatures = l.Out, Rank = placement == LoraPlacement.Initializers ? w.Rank : 0,
                Alpha = w.Scale * w.Rank, LoraA = aName, LoraB = bName, ScaleTensor = scaleName, Magnitude = magName,
            });
        }

        model.Graph.SortTopologically();
        new LoraManifest { Placement = placement, Modules = infos, UseDora = weights.Modules.Any(m => m.Magnitude is not null) }.Write(model);
        return model;
    }

    public static string Save(Model model, string path)
    {
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return path;
    }

    public static Tensor Weight(string name, long[] dims, DataType type, Random rng)
    {
        float[] v = Rand((int)(dims[0] * dims[1]), rng, 0.3f);
        return type == DataType.Float ? InMemoryTensor.FromFloats(name, dims, v) : new InMemoryTensor(name, type, dims, TensorConvert.FromFloat32(v, type));
    }

    public static float[] Rand(int n, Random rng, float scale) => Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2) - 1) * scale).ToArray();

    /// <summary>max |a−b| / max |b|: relative to the output's range, so near-zero entries do not blow it up.</summary>
    public static double MaxRelError(float[] actual, float[] expected)
    {
        Assert.AreEqual(expected.Length, actual.Length);
        double scale = expected.Max(v => Math.Abs((double)v));
        return actual.Zip(expected, (a, e) => Math.Abs((double)a - e)).Max() / scale;
    }
}
