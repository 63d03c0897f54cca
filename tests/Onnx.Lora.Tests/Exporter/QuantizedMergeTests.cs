using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// Merging into an int4 MatMulNBits base. The base's nibbles, scales and zero points are random (not made by the
/// codec under test); the test decodes every stored byte itself and computes W' = dequant(W) + s·A·B in double.
/// </summary>
[TestClass]
public sealed class QuantizedMergeTests
{
    private const int K = 64, N = 24, BlockSize = 16, Rank = 4, Rows = 5;
    private const float Scale = 0.5f;
    private const string Node = "/model/layers.0/mlp/down_proj/MatMulNBits";
    private const string Module = "model.layers.0.mlp.down_proj";

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void Merge_Requantize_OutputWithinQuantizationStepBoundAndGraphUnchanged(bool zeroPoints)
    {
        using var dir = new TempDir();
        Fixture f = Build(zeroPoints);
        string loraPath = Save(f.Lora, dir.File("lora.onnx"));
        string basePath = Save(f.Base, dir.File("base.onnx"));

        MergeReport report = LoraMerger.Merge(loraPath, dir.File("merged.onnx"));

        // The stored merged weight, decoded here, against W' in double.
        using Model merged = OnnxReader.Load(dir.File("merged.onnx"));
        (double[] wq, double[] steps) = Decode(merged, zeroPoints);
        double maxAbs = 0, maxW = 0, maxStep = steps.Max();
        for (int k = 0; k < K; k++)
        {
            for (int n = 0; n < N; n++)
            {
                double err = Math.Abs(wq[(k * N) + n] - f.MergedW[(k * N) + n]);
                Assert.IsLessThanOrEqualTo((steps[(n * (K / BlockSize)) + (k / BlockSize)] / 2) + 1e-6, err, $"W'[{k},{n}]: at most half its block's step");
                maxAbs = Math.Max(maxAbs, err);
                maxW = Math.Max(maxW, Math.Abs(f.MergedW[(k * N) + n]));
            }
        }

        QuantizationError q = report.Quantization.Single();
        Assert.AreEqual(Module, q.Module);
        Assert.AreEqual(maxAbs, q.MaxAbs, 1e-6, "reported max abs error = the error of the stored bytes");
        Assert.AreEqual(maxAbs / maxW, q.MaxRel, 1e-6);
        Assert.AreEqual(maxStep, q.MaxStep, 1e-6);
        Assert.IsGreaterThan(0, maxAbs);

        // Through ORT: |y_merged − y_lora| ≤ Σ_k |x_k|·step(k, n)/2 per output element.
        float[] x = LoraTestModels.Rand(Rows * K, new Random(77), 1f);
        float[] yLora = RunOrt(loraPath, x), yMerged = RunOrt(dir.File("merged.onnx"), x), yBase = RunOrt(basePath, x);
        double worstRatio = 0;
        for (int r = 0; r < Rows; r++)
        {
            for (int n = 0; n < N; n++)
            {
                double bound = 1e-5;
                for (int k = 0; k < K; k++)
                {
                    bound += Math.Abs(x[(r * K) + k]) * steps[(n * (K / BlockSize)) + (k / BlockSize)] / 2;
                }

                double diff = Math.Abs(yMerged[(r * N) + n] - yLora[(r * N) + n]);
                Assert.IsLessThanOrEqualTo(bound, diff, $"y[{r},{n}]");
                worstRatio = Math.Max(worstRatio, diff / bound);
            }
        }

        Assert.IsGreaterThan(0.1, LoraTestModels.MaxRelError(yBase, yLora), "the adapter changes the output far beyond the quantization error");
        Console.WriteLine($"zero points {zeroPoints}: max |ΔW| {maxAbs:E3} (max step {maxStep:E3}), rel {q.MaxRel:E3}; worst |Δy| / bound {worstRatio:F3}");
        AssertSameGraph(basePath, dir.File("merged.onnx"));
    }

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void Merge_FloatCopy_IsExactAndReplacesTheNodeByMatMul(bool zeroPoints)
    {
        using var dir = new TempDir();
        Fixture f = Build(zeroPoints);
        string loraPath = Save(f.Lora, dir.File("lora.onnx"));

        MergeReport report = LoraMerger.Merge(loraPath, dir.File("merged.onnx"), options: new MergeOptions { Quantized = QuantizedMergeMode.FloatCopy });

        float[] x = LoraTestModels.Rand(Rows * K, new Random(78), 1f);
        Assert.IsLessThanOrEqualTo(1e-5, LoraTestModels.MaxRelError(RunOrt(dir.File("merged.onnx"), x), RunOrt(loraPath, x)));
        CollectionAssert.AreEqual(new[] { Node }, report.ReplacedNodes.ToArray());
        using Model merged = OnnxReader.Load(dir.File("merged.onnx"));
        CollectionAssert.AreEqual(new[] { "MatMul" }, merged.Graph.Nodes.Select(n => n.OpType).ToArray(), "the graph changed: MatMulNBits → MatMul");
        Assert.AreEqual(Node, merged.Graph.Nodes[0].Name);
        Assert.AreEqual(1, merged.Graph.Initializers.Count, "packed weight, scales and zero points are gone; one float weight remains");
        CollectionAssert.AreEqual(f.MergedW.Select(v => (float)v).ToArray(), merged.Graph.Initializers.Values.Single().Initializer!.ToFloat32(), new FloatTolerance(1e-6f));
    }

    private sealed class FloatTolerance(float tolerance) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) => Math.Abs((float)x! - (float)y!) <= tolerance ? 0 : 1;
    }

    private sealed record Fixture(Model Base, Model Lora, double[] MergedW);

    /// <summary>x [Rows, K] → MatMulNBits (random nibbles, scales, zero points) → y, and the LoRA model y + s·(x·A)·B.</summary>
    private static Fixture Build(bool zeroPoints)
    {
        var rng = new Random(zeroPoints ? 11 : 12);
        int blocks = K / BlockSize;
        byte[] packed = new byte[N * blocks * BlockSize / 2];
        rng.NextBytes(packed);
        float[] scales = Enumerable.Range(0, N * blocks).Select(_ => (float)(0.02 + (rng.NextDouble() * 0.05))).ToArray();
        byte[] zp = new byte[N * ((blocks + 1) / 2)];
        rng.NextBytes(zp);
        float[] a = LoraTestModels.Rand(K * Rank, rng, 0.5f);
        float[] b = LoraTestModels.Rand(Rank * N, rng, 0.5f);

        Model Make(bool lora)
        {
            var g = new GraphBuilder(lora ? "lora" : "base", 17);
            g.Model.OpsetImports["com.microsoft"] = 1;
            Value x = g.Input("x", DataType.Float, Rows, K);
            Value bq = g.Initializer(new InMemoryTensor(Module + ".MatMul.weight_Q4", DataType.UInt8, [N, blocks, BlockSize / 2], packed));
            Value sc = g.Floats(Module + ".MatMul.weight_scales", [N * blocks], scales);
            Value? zv = zeroPoints ? g.Initializer(new InMemoryTensor(Module + ".MatMul.weight_zp", DataType.UInt8, [zp.Length], zp)) : null;
            Value?[] inputs = zeroPoints ? [x, bq, sc, zv] : [x, bq, sc];
            Value y = g.Op("MatMulNBits", inputs, [Attr.Int("K", K), Attr.Int("N", N), Attr.Int("bits", 4), Attr.Int("block_size", BlockSize)], "com.microsoft", Node);
            if (lora)
            {
                Value av = g.Floats(Module + ".lora_A.weight", [K, Rank], a);
                Value bv = g.Floats(Module + ".lora_B.weight", [Rank, N], b);
                Value s = g.Scalar(Module + ".lora_scale", Scale);
                y = g.Add(y, g.Mul(g.MatMul(g.MatMul(x, av), bv), s));
                new LoraManifest
                {
                    Placement = LoraPlacement.Initializers,
                    Modules =
                    [
                        new LoraModuleInfo
                        {
                            Module = Module, TargetNode = Node, BaseWeight = bq.Name, Layout = WeightLayout.MatMulNBits, InFeatures = K, OutFeatures = N,
                            Rank = Rank, Alpha = Scale * Rank, LoraA = av.Name, LoraB = bv.Name, ScaleTensor = s.Name, BlockSize = BlockSize,
                            Scales = sc.Name, ZeroPoints = zv?.Name,
                        },
                    ],
                }.Write(g.Model);
            }

            g.Output(y, "y", DataType.Float, Rows, N);
            return g.Model;
        }

        // W' = dequant(W) + s·A·B in double, decoding the nibbles here.
        var merged = new double[K * N];
        for (int n = 0; n < N; n++)
        {
            for (int k = 0; k < K; k++)
            {
                int blk = k / BlockSize;
                int z = zeroPoints ? Nibble(zp, (n * ((blocks + 1) / 2) * 2) + blk) : 8;
                double delta = 0;
                for (int r = 0; r < Rank; r++)
                {
                    delta += (double)a[(k * Rank) + r] * b[(r * N) + n];
                }

                merged[(k * N) + n] = ((Nibble(packed, (n * K) + k) - z) * (double)scales[(n * blocks) + blk]) + (Scale * delta);
            }
        }

        return new Fixture(Make(lora: false), Make(lora: true), merged);
    }

    /// <summary>The merged model's MatMulNBits weight decoded here: W [K, N] and the step (scale) per (column, block).</summary>
    private static (double[] W, double[] Steps) Decode(Model merged, bool zeroPoints)
    {
        Node node = merged.Graph.Nodes.Single();
        Assert.AreEqual("MatMulNBits", node.OpType);
        Assert.AreEqual(zeroPoints ? 4 : 3, node.Inputs.Count, "zero points kept exactly when the base had them");
        byte[] packed = node.Inputs[1]!.Initializer!.GetBytes().ToArray();
        float[] scales = node.Inputs[2]!.Initializer!.ToFloat32();
        byte[]? zp = zeroPoints ? node.Inputs[3]!.Initializer!.GetBytes().ToArray() : null;
        int blocks = K / BlockSize;
        var w = new double[K * N];
        for (int n = 0; n < N; n++)
        {
            for (int k = 0; k < K; k++)
            {
                int blk = k / BlockSize;
                int z = zp is null ? 8 : Nibble(zp, (n * ((blocks + 1) / 2) * 2) + blk);
                w[(k * N) + n] = (Nibble(packed, (n * K) + k) - z) * (double)scales[(n * blocks) + blk];
            }
        }

        return (w, scales.Select(s => (double)s).ToArray());
    }

    private static int Nibble(byte[] data, int index) => (data[index / 2] >> (index % 2 * 4)) & 0xF;

    private static string Save(Model model, string path)
    {
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return path;
    }

    private static float[] RunOrt(string path, float[] x)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        using var session = new InferenceSession(path, options);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor("x", new DenseTensor<float>(x, [Rows, K]))]);
        return results.Single().AsTensor<float>().ToArray();
    }

    private static void AssertSameGraph(string basePath, string mergedPath)
    {
        using Model a = OnnxReader.Load(basePath);
        using Model b = OnnxReader.Load(mergedPath);
        CollectionAssert.AreEqual(a.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}:{n.Inputs.Count}").ToArray(), b.Graph.Nodes.Select(n => $"{n.Name}:{n.OpType}:{n.Inputs.Count}").ToArray());
        CollectionAssert.AreEquivalent(a.Graph.Initializers.Values.Select(v => v.Name).ToArray(), b.Graph.Initializers.Values.Select(v => v.Name).ToArray());
        foreach (Value v in a.Graph.Initializers.Values)
        {
            CollectionAssert.AreEqual(v.Initializer!.Dims.ToArray(), b.Graph.Initializers[v.Name].Initializer!.Dims.ToArray(), v.Name);
        }
    }
}
