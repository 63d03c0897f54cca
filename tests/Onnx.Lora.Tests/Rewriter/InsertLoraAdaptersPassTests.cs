using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

[TestClass]
public sealed class InsertLoraAdaptersPassTests
{
    private static readonly LoraOptions s_all = new() { Rank = 4, Alpha = 8, Targets = [".*"], TargetRegex = ".*" };

    /// <summary>Injects, checks B=0 ≡ base, then random A,B ≡ base with W + s·A·B (computed here), returns the errors.</summary>
    private static (float ZeroDiff, float RelError, float Changed) CheckAgainstMergedBase(Func<Model> build, LoraOptions options, float tolerance)
    {
        using var dir = new TempDir();
        using Model baseModel = build();
        string basePath = LoraTestSupport.Save(baseModel, dir, "base.onnx");
        Dictionary<string, float[]> baseOut = OrtRunner.Run(basePath);

        using Model lora = build();
        LoraManifest manifest = LoraInjector.Inject(lora, options);
        Assert.IsTrue(manifest.Modules.Count > 0);
        Dictionary<string, float[]> zeroOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora0.onnx"));
        float zeroDiff = LoraTestSupport.MaxAbsDiff(zeroOut, baseOut);
        Assert.IsTrue(zeroDiff <= Tolerances.ZeroAdapterAbs, $"B=0 changed the output by {zeroDiff}");

        var adapters = LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 77);
        Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx"));
        using Model reference = build();
        LoraTestSupport.MergeIntoBase(reference, manifest, adapters);
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "merged.onnx"));

        float rel = LoraTestSupport.RelativeError(loraOut, refOut);
        float changed = LoraTestSupport.RelativeError(loraOut, baseOut);
        Assert.IsTrue(rel <= tolerance, $"relative error {rel} > {tolerance}");
        Assert.IsTrue(changed > 10 * tolerance, $"the adapter did not change the output (rel change {changed}); the test would be vacuous");
        Console.WriteLine($"B=0 max abs diff {zeroDiff:E2}; random A,B rel error {rel:E2} (tolerance {tolerance:E0}); rel change vs base {changed:E2}");
        return (zeroDiff, rel, changed);
    }

    [TestMethod]
    [DataRow(false, true)]
    [DataRow(true, true)]
    [DataRow(false, false)]
    public void Run_MatMulLayer_EqualsBaseWithMergedWeight(bool transposedWeight, bool withBias)
    {
        CheckAgainstMergedBase(() => TestGraphs.MatMul(transposedWeight, withBias), s_all, Tolerances.MergedRelFp32);
    }

    [TestMethod]
    [DataRow(false, false)]
    [DataRow(false, true)]
    [DataRow(true, false)]
    [DataRow(true, true)]
    public void Run_GemmAnyTransFlags_EqualsBaseWithMergedWeight(bool transA, bool transB)
    {
        CheckAgainstMergedBase(() => TestGraphs.Gemm(transA, transB), s_all, Tolerances.MergedRelFp32);
    }

    [TestMethod]
    public void Run_FusedQkv_IsOneTargetAndEqualsBaseWithMergedWeight()
    {
        using Model m = TestGraphs.FusedQkv();
        var plan = LoraInjector.Plan(m, new LoraOptions { Targets = ["qkv_proj"] });
        Assert.AreEqual(1, plan.Count);
        Assert.AreEqual("model.layers.0.attn.qkv_proj", plan[0].Target.Module);
        CheckAgainstMergedBase(() => TestGraphs.FusedQkv(), new LoraOptions { Rank = 3, Alpha = 5, Targets = ["qkv_proj"] }, Tolerances.MergedRelFp32);
    }

    [TestMethod]
    public void Run_RsLora_ScalesByAlphaOverSqrtRank()
    {
        var options = s_all with { UseRsLora = true, Rank = 4, Alpha = 3 };
        using Model m = TestGraphs.MatMul();
        LoraManifest manifest = LoraInjector.Inject(m, options);
        Assert.AreEqual(3 / 2.0, manifest.Modules[0].Scaling, 1e-12);
        float scale = m.Graph.Initializers[manifest.Modules[0].ScaleTensor!].Initializer!.ToFloat32()[0];
        Assert.AreEqual(1.5f, scale);
        CheckAgainstMergedBase(() => TestGraphs.MatMul(), options, Tolerances.MergedRelFp32);
    }

    [TestMethod]
    public void Run_MatMulNBits_EqualsDequantizedBaseWithMergedWeight()
    {
        (Model nbits, float[] dequant) = NBitsGraph.Build();
        using var dir = new TempDir();
        using (nbits)
        {
            Dictionary<string, float[]> baseOut = OrtRunner.Run(LoraTestSupport.Save(nbits, dir, "base.onnx"));
            using Model deqModel = NBitsGraph.AsMatMul(dequant);
            Dictionary<string, float[]> deqOut = OrtRunner.Run(LoraTestSupport.Save(deqModel, dir, "deq.onnx"));
            Assert.IsTrue(LoraTestSupport.RelativeError(baseOut, deqOut) < 1e-5f, "the test's own dequantization disagrees with ORT's MatMulNBits");

            LoraManifest manifest = LoraInjector.Inject(nbits, new LoraOptions { Rank = 2, Alpha = 4 });
            LoraModuleInfo module = manifest.Modules.Single();
            Assert.AreEqual(WeightLayout.MatMulNBits, module.Layout);
            Assert.AreEqual(NBitsGraph.K, module.InFeatures);
            Assert.AreEqual(NBitsGraph.N, module.OutFeatures);
            Assert.AreEqual(NBitsGraph.BlockSize, module.BlockSize);
            Assert.AreEqual("model.layers.0.mlp.down_proj", module.Module);

            float zero = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(nbits, dir, "lora0.onnx")), baseOut);
            Assert.IsTrue(zero <= Tolerances.ZeroAdapterAbs, $"B=0 changed the output by {zero}");

            var adapters = LoraTestSupport.RandomizeAdapters(nbits, manifest, seed: 5);
            Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(nbits, dir, "lora.onnx"));
            float[] merged = LoraTestSupport.AddDelta(dequant, adapters[module.Module].A, adapters[module.Module].B, NBitsGraph.K, NBitsGraph.N, 2, 4 / 2.0);
            using Model refModel = NBitsGraph.AsMatMul(merged);
            float rel = LoraTestSupport.RelativeError(loraOut, OrtRunner.Run(LoraTestSupport.Save(refModel, dir, "ref.onnx")));
            Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
        }
    }

    [TestMethod]
    public void Run_Fp16Base_KeepsFloat32ParametersAndMatchesMergedBase()
    {
        using Model m = TestGraphs.MatMulFp16();
        LoraManifest manifest = LoraInjector.Inject(m, new LoraOptions { Rank = 2, Alpha = 2 });
        Assert.AreEqual(DataType.Float, m.Graph.Initializers[manifest.Modules[0].LoraA].Initializer!.DataType);
        Assert.AreEqual(DataType.Float16, m.Graph.Initializers[manifest.Modules[0].ScaleTensor!].Initializer!.DataType);
        CheckAgainstMergedBase(() => TestGraphs.MatMulFp16(), new LoraOptions { Rank = 2, Alpha = 2 }, Tolerances.MergedRelFp16);
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Run_Dora_MatchesPeftFormulaComputedIndependently(bool gemmWithBias)
    {
        // DoRA output = m/‖W + s·A·B‖ ⊙ (x·W + s·x·A·B) + bias, norms per output column; m starts at ‖W‖.
        Func<Model> build = gemmWithBias ? () => TestGraphs.Gemm(false, true) : () => TestGraphs.MatMul(withBias: false);
        var options = new LoraOptions { Rank = 3, Alpha = 6, UseDora = true };
        using var dir = new TempDir();
        using Model baseModel = build();
        Dictionary<string, float[]> baseOut = OrtRunner.Run(LoraTestSupport.Save(baseModel, dir, "base.onnx"));
        using Model lora = build();
        LoraManifest manifest = LoraInjector.Inject(lora, options);
        LoraModuleInfo module = manifest.Modules.Single();
        Assert.IsNotNull(module.Magnitude);
        float zero = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora0.onnx")), baseOut);
        Assert.IsTrue(zero <= 1e-5f, $"DoRA with B=0 changed the output by {zero}");

        var adapters = LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 9);
        var rng = new Random(3);
        float[] magnitude = Enumerable.Range(0, (int)module.OutFeatures).Select(_ => (float)(0.5 + rng.NextDouble())).ToArray();
        lora.Graph.Initializers.SetData(module.Magnitude!, InMemoryTensor.FromFloats(module.Magnitude!, [module.OutFeatures], magnitude));
        Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx"));

        // Reference: W' = W + s·A·B, then scale every column o by m[o]/‖W'[:,o]‖; the bias stays unscaled.
        using Model reference = build();
        LoraTestSupport.MergeIntoBase(reference, manifest, adapters);
        Tensor stored = reference.Graph.Initializers[module.BaseWeight].Initializer!;
        bool outIn = module.Layout == WeightLayout.OutIn;
        int inF = (int)module.InFeatures, outF = (int)module.OutFeatures;
        float[] w = outIn ? LoraTestSupport.Transpose(stored.ToFloat32(), outF, inF) : stored.ToFloat32();
        for (int o = 0; o < outF; o++)
        {
            double norm = Math.Sqrt(Enumerable.Range(0, inF).Sum(i => (double)w[i * outF + o] * w[i * outF + o]));
            for (int i = 0; i < inF; i++)
            {
                w[i * outF + o] = (float)(w[i * outF + o] * magnitude[o] / norm);
            }
        }

        float[] back = outIn ? LoraTestSupport.Transpose(w, inF, outF) : w;
        reference.Graph.Initializers.SetData(module.BaseWeight, InMemoryTensor.FromFloats(module.BaseWeight, stored.Dims, back));
        Dictionary<string, float[]> refOut = OrtRunner.Run(LoraTestSupport.Save(reference, dir, "ref.onnx"));
        float rel = LoraTestSupport.RelativeError(loraOut, refOut);
        Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
        Assert.IsTrue(LoraTestSupport.RelativeError(loraOut, baseOut) > 1e-2f, "DoRA did not change the output");

        // The weight norm is detached: it is computed behind a stop-gradient Identity.
        Assert.IsTrue(lora.Graph.Nodes.Any(GraphConventions.IsStopGradient));
    }

    [TestMethod]
    public void Run_Pissa_KeepsOutputAndUsesTopSingularVectors()
    {
        using var dir = new TempDir();
        using Model baseModel = TestGraphs.MatMul(withBias: false);
        Dictionary<string, float[]> baseOut = OrtRunner.Run(LoraTestSupport.Save(baseModel, dir, "base.onnx"));
        using Model lora = TestGraphs.MatMul(withBias: false);
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 2, Alpha = 4, Init = LoraInit.Pissa });
        Assert.IsTrue(manifest.Pissa);
        LoraModuleInfo module = manifest.Modules.Single();

        // Residual + s·A·B reproduces W, so the model's output is unchanged.
        float diff = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx")), baseOut);
        Assert.IsTrue(diff < 1e-5f, $"PiSSA changed the output by {diff}");

        // s·A·B is the best rank-2 approximation: ‖W − s·A·B‖²_F = σ3² + ... + σ6² (Eckart–Young), σ from the test's own Jacobi SVD.
        float[] w = baseModel.Graph.Initializers["onnx::MatMul_7"].Initializer!.ToFloat32();
        float[] residual = lora.Graph.Initializers["onnx::MatMul_7"].Initializer!.ToFloat32();
        double[] sigma = SingularValues(w, TestGraphs.In, TestGraphs.Out);
        double expected = sigma.Skip(2).Sum(s => s * s);
        double actual = residual.Sum(v => (double)v * v);
        Assert.AreEqual(expected, actual, 1e-4 * sigma.Sum(s => s * s));
        Assert.AreEqual(4 / 2.0, module.Scaling, 1e-12);
    }

    [TestMethod]
    public void Run_SameSeed_IsReproducibleAndDifferentSeedIsNot()
    {
        float[] ReadA(int seed)
        {
            using Model m = TestGraphs.MatMul();
            LoraManifest manifest = LoraInjector.Inject(m, new LoraOptions { Rank = 4, Seed = seed });
            return m.Graph.Initializers[manifest.Modules[0].LoraA].Initializer!.ToFloat32();
        }

        float[] a1 = ReadA(1);
        CollectionAssert.AreEqual(a1, ReadA(1));
        CollectionAssert.AreNotEqual(a1, ReadA(2));

        // PEFT's kaiming_uniform_(a=√5) bound on torch's A [r, in] is 1/√in.
        float bound = 1f / MathF.Sqrt(TestGraphs.In);
        Assert.IsTrue(a1.All(v => MathF.Abs(v) <= bound));
        Assert.IsTrue(a1.Max(MathF.Abs) > 0.5f * bound);
    }

    [TestMethod]
    public void Run_AdapterSlots_RunsWithoutAdapterAndWithFedAdapter()
    {
        using var dir = new TempDir();
        using Model baseModel = TestGraphs.MatMul();
        Dictionary<string, float[]> baseOut = OrtRunner.Run(LoraTestSupport.Save(baseModel, dir, "base.onnx"));
        using Model slots = TestGraphs.MatMul();
        LoraManifest manifest = LoraInjector.Inject(slots, new LoraOptions { Placement = LoraPlacement.AdapterSlots });
        LoraModuleInfo module = manifest.Modules.Single();
        Assert.AreEqual("model.layers.0.self_attn.q_proj.lora_A.weight", module.LoraA);
        Assert.IsNull(module.ScaleTensor);
        Value aInput = slots.Graph.Inputs.Single(i => i.Name == module.LoraA);
        Assert.AreEqual("model.layers.0.self_attn.q_proj.lora_rank", aInput.Shape![1].Param);
        Assert.AreEqual("model.layers.0.self_attn.q_proj.lora_rank", slots.Graph.Inputs.Single(i => i.Name == module.LoraB).Shape![0].Param);
        CollectionAssert.AreEqual(new long[] { TestGraphs.In, 0 }, aInput.Initializer!.Dims.ToArray());
        string path = LoraTestSupport.Save(slots, dir, "slots.onnx");

        float none = LoraTestSupport.MaxAbsDiff(OrtRunner.Run(path), baseOut);
        Assert.IsTrue(none <= Tolerances.ZeroAdapterAbs, $"without an adapter the output changed by {none}");

        // Feed a rank-3 adapter with the scale already folded into B (as .onnx_adapter files carry it).
        const int R = 3;
        float[] a = LoraTestSupport.Random(TestGraphs.In * R, 11, 0.5f);
        float[] bFolded = LoraTestSupport.Random(R * TestGraphs.Out, 12, 0.5f);
        var feeds = new Dictionary<string, (float[], int[])>
        {
            [module.LoraA] = (a, [TestGraphs.In, R]),
            [module.LoraB] = (bFolded, [R, TestGraphs.Out]),
        };
        Dictionary<string, float[]> fed = LoraTestSupport.RunWithFeeds(path, feeds);

        using Model reference = TestGraphs.MatMul();
        float[] w = reference.Graph.Initializers["onnx::MatMul_7"].Initializer!.ToFloat32();
        reference.Graph.Initializers.SetData("onnx::MatMul_7", InMemoryTensor.FromFloats("onnx::MatMul_7", [TestGraphs.In, TestGraphs.Out], LoraTestSupport.AddDelta(w, a, bFolded, TestGraphs.In, TestGraphs.Out, R, 1.0)));
        float rel = LoraTestSupport.RelativeError(fed, OrtRunner.Run(LoraTestSupport.Save(reference, dir, "ref.onnx")));
        Assert.IsTrue(rel <= Tolerances.MergedRelFp32, $"relative error {rel}");
    }

    [TestMethod]
    [DataRow(false, false)]
    [DataRow(true, false)]
    [DataRow(false, true)]
    public void Run_Initializers_ScalesRankIntermediateBeforeB(bool fp16, bool dora)
    {
        // ((x·A)·s)·B, not ((x·A)·B)·s: the Mul runs on [.., r] instead of [.., out]. The numbers are checked by the
        // merged-base tests (fp32, fp16, DoRA); this pins where the scale sits.
        using Model m = fp16 ? TestGraphs.MatMulFp16() : TestGraphs.MatMul();
        LoraModuleInfo module = LoraInjector.Inject(m, new LoraOptions { Rank = 2, Alpha = 4, UseDora = dora, Dropout = 0.1, TrainingGraph = true }).Modules.Single();
        static string Source(Value v) => v.Producer is { OpType: "Cast" } cast ? cast.Inputs[0]!.Name : v.Name;

        // The branch's last MatMul reads B and not A (DoRA's weight norm also multiplies A·B; that one reads A).
        Node last = m.Graph.Nodes.Single(n => n.Is("MatMul") && Source(n.Inputs[1]!) == module.LoraB && Source(n.Inputs[0]!) != module.LoraA);
        Node scale = last.Inputs[0]!.Producer!;
        Assert.AreEqual("Mul", scale.OpType);
        Value[] operands = scale.Inputs.Select(v => v!).ToArray();
        Assert.AreEqual(1, operands.Count(v => v.Name == module.ScaleTensor), "the Mul before B multiplies by the LoRA scale");
        Node xa = operands.Single(v => v.Name != module.ScaleTensor).Producer!;
        Assert.IsTrue(xa.Is("MatMul") && Source(xa.Inputs[1]!) == module.LoraA, $"the scaled value is x·A, got {xa.OpType} '{xa.Name}'");
        Assert.AreEqual(fp16 ? DataType.Float16 : DataType.Float, m.Graph.Initializers[module.ScaleTensor!].Initializer!.DataType);
    }

    [TestMethod]
    public void Run_TrainingGraphWithDropout_AddsDropoutOnlyThere()
    {
        using Model inference = TestGraphs.MatMul();
        LoraInjector.Inject(inference, new LoraOptions { Dropout = 0.1 });
        Assert.IsFalse(inference.Graph.Nodes.Any(n => n.Is("Dropout")));

        using Model training = TestGraphs.MatMul();
        LoraManifest manifest = LoraInjector.Inject(training, new LoraOptions { Dropout = 0.1, TrainingGraph = true });
        Node dropout = training.Graph.Nodes.Single(n => n.Is("Dropout"));
        Assert.AreEqual(0.1f, dropout.Inputs[1]!.Initializer!.ToFloat32()[0], 1e-7f);
        Assert.AreEqual(0.1, manifest.Dropout);
    }

    [TestMethod]
    public void Run_NoMatchingLayer_ReportsPassFailureAndLeavesModelUnchanged()
    {
        using Model m = TestGraphs.MatMul();
        int nodes = m.Graph.Nodes.Count;
        var pass = new InsertLoraAdaptersPass(new LoraOptions { Targets = ["v_proj"] });
        var e = Assert.ThrowsExactly<LoraOptionsException>(() => pass.Run(m));
        StringAssert.Contains(e.Message, "model.layers.0.self_attn.q_proj");
        Assert.AreEqual(nodes, m.Graph.Nodes.Count);
        Assert.IsNull(LoraManifest.Read(m));
    }

    [TestMethod]
    public void Run_TwiceOnSameModel_Refuses()
    {
        using Model m = TestGraphs.MatMul();
        LoraInjector.Inject(m, new LoraOptions());
        Assert.ThrowsExactly<Onnx.Lora.Ir.PassException>(() => LoraInjector.Inject(m, new LoraOptions()));
    }

    [TestMethod]
    public void Run_Modified_IsTrueAndGraphOutputsKeepTheirNames()
    {
        using Model m = TestGraphs.FusedQkv();
        string[] outputs = m.Graph.Outputs.Select(o => o.Name).ToArray();
        var result = new InsertLoraAdaptersPass(new LoraOptions()).Run(m);
        Assert.IsTrue(result.Modified);
        CollectionAssert.AreEqual(outputs, m.Graph.Outputs.Select(o => o.Name).ToArray());
    }

    /// <summary>Singular values by one-sided Jacobi on W [rows, cols] (independent of the rewriter's SVD).</summary>
    private static double[] SingularValues(float[] w, int rows, int cols)
    {
        var a = w.Select(v => (double)v).ToArray();
        for (int sweep = 0; sweep < 60; sweep++)
        {
            for (int p = 0; p < cols; p++)
            {
                for (int q = p + 1; q < cols; q++)
                {
                    double alpha = 0, beta = 0, gamma = 0;
                    for (int i = 0; i < rows; i++)
                    {
                        alpha += a[i * cols + p] * a[i * cols + p];
                        beta += a[i * cols + q] * a[i * cols + q];
                        gamma += a[i * cols + p] * a[i * cols + q];
                    }

                    if (Math.Abs(gamma) < 1e-15)
                    {
                        continue;
                    }

                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.Sign(zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    if (zeta == 0)
                    {
                        t = 1;
                    }

                    double c = 1 / Math.Sqrt(1 + t * t), s = c * t;
                    for (int i = 0; i < rows; i++)
                    {
                        double ap = a[i * cols + p], aq = a[i * cols + q];
                        a[i * cols + p] = c * ap - s * aq;
                        a[i * cols + q] = s * ap + c * aq;
                    }
                }
            }
        }

        return Enumerable.Range(0, cols).Select(j => Math.Sqrt(Enumerable.Range(0, rows).Sum(i => a[i * cols + j] * a[i * cols + j]))).OrderDescending().ToArray();
    }
}
