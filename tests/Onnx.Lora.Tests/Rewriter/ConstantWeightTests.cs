using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>
/// Weights stored as Constant nodes (a paddle2onnx-style graph: opset 9, no initializers, weights reached through
/// Transpose, Cast, Reshape and Identity): found, injected, merged; outputs checked through ORT against the base model.
/// </summary>
[TestClass]
public sealed class ConstantWeightTests
{
    // Merged vs unmerged, fp32 (max abs diff / max abs of the unmerged output): the bound.
    private const float MergedRel = 1e-5f;

    [TestMethod]
    public void Find_PaddleStyleGraph_FindsEveryConstantNodeLinearLayer()
    {
        using Model model = PaddleStyleBuilder.Build(new PaddleStyleConfig());
        Assert.AreEqual(0, model.Graph.Initializers.Count, "the builder stores every weight as a Constant node");

        IReadOnlyList<LinearTarget> targets = TargetDiscovery.Find(model);
        LinearTarget[] linear = targets.Where(t => !t.IsOutputHead && t.OpKind is LinearOpKind.MatMul).ToArray();
        CollectionAssert.AreEqual(Enumerable.Range(0, 18).Select(i => $"linear_{i}").ToArray(), linear.Select(t => t.Module).ToArray());
        Assert.IsTrue(linear.All(t => t.WeightIsConstantNode), "every weight is a Constant node output");
        Assert.AreEqual(WeightLayout.OutIn, linear[1].Layout, "linear_1 is stored [out, in] behind a Transpose");
        Assert.AreEqual(DataType.Double, linear[2].WeightType, "linear_2 is stored float64 behind a Cast");
        Assert.IsTrue(linear[3].WeightReshaped, "linear_3 is stored flat behind a Reshape");
        Assert.AreEqual("linear_head", targets.Single(t => t.IsOutputHead).Module);

        ModelSummary summary = ModelSummary.Create(model);
        long expected = model.Graph.Nodes.Where(n => n.OpType == "Constant")
            .Select(n => n.GetAttribute("value")!.AsTensor()).Where(t => t.DataType.IsFloatingPoint()).Sum(t => t.ElementCount);
        Assert.AreEqual(expected, summary.ParameterCount, "Constant-node weights are counted as parameters");
        Assert.IsGreaterThan(5000L, summary.ParameterCount);
    }

    [TestMethod]
    public void Inspect_PaddleStyleModel_ListsLinearLayersAndParameters()
    {
        using var dir = new TempDir();
        string path = SaveBase(dir);
        (int code, string stdout, string stderr) = CliRunner.Run("inspect", path);
        Assert.AreEqual(0, code, stderr);
        StringAssert.Contains(stdout, "linear layers LoRA can target: 18 (+1 output head");
        StringAssert.Contains(stdout, "  linear_17 ");
        Assert.IsFalse(stdout.Contains("parameters: 0 ", StringComparison.Ordinal), stdout);
    }

    [TestMethod]
    public void Inject_PaddleStyleAllLinearWithZeroB_KeepsOutputsIdentical()
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir);
        using Model model = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
        Assert.AreEqual(18, manifest.Modules.Count);
        Assert.IsTrue(manifest.Modules.All(m => m.BaseWeightStorage == ConstantWeights.ConstantNode));
        Assert.IsTrue(manifest.Modules.All(m => model.Graph.Initializers.Contains(m.BaseWeight)), "adapted weights are lifted to initializers");
        string loraPath = LoraTestSupport.Save(model, dir, "lora.onnx");

        Dictionary<string, float[]> expected = OrtRunner.Run(basePath);
        Dictionary<string, float[]> actual = OrtRunner.Run(loraPath);
        Assert.AreEqual(0f, LoraTestSupport.MaxAbsDiff(actual, expected), "B = 0 adds exact zeros");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Merge_PaddleStyleTrainedAdapter_EqualsUnmergedAndKeepsWeightStorage(bool constantsAsInitializers)
    {
        using var dir = new TempDir();
        string basePath = SaveBase(dir);
        string loraPath;
        using (Model model = OnnxReader.Load(basePath))
        {
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
            LoraTestSupport.RandomizeAdapters(model, manifest, seed: 17, scale: 0.3f);
            loraPath = LoraTestSupport.Save(model, dir, "lora.onnx");
        }

        string mergedPath = dir.File("merged.onnx");
        MergeReport report = LoraMerger.Merge(loraPath, mergedPath, options: new MergeOptions { ConstantsAsInitializers = constantsAsInitializers });
        Assert.AreEqual(18, report.MergedModules);

        Dictionary<string, float[]> unmerged = OrtRunner.Run(loraPath);
        Dictionary<string, float[]> merged = OrtRunner.Run(mergedPath);
        Dictionary<string, float[]> baseline = OrtRunner.Run(basePath);
        float error = LoraTestSupport.RelativeError(merged, unmerged);
        Console.WriteLine($"paddle-style merged vs unmerged: max rel error {error:E2} (bound {MergedRel:E0})");
        Assert.IsLessThanOrEqualTo(MergedRel, error);
        Assert.IsGreaterThan(100 * MergedRel, LoraTestSupport.RelativeError(baseline, unmerged), "the adapter changes the output");

        using Model baseModel = OnnxReader.Load(basePath);
        using Model mergedModel = OnnxReader.Load(mergedPath);
        Assert.AreEqual(constantsAsInitializers ? 18 : 0, mergedModel.Graph.Initializers.Count);
        int baseConstants = baseModel.Graph.Nodes.Count(n => n.OpType == "Constant");
        Assert.AreEqual(constantsAsInitializers ? baseConstants - 18 : baseConstants, mergedModel.Graph.Nodes.Count(n => n.OpType == "Constant"));
        Assert.AreEqual(baseModel.Graph.Nodes.Count(n => n.OpType != "Constant"), mergedModel.Graph.Nodes.Count(n => n.OpType != "Constant"), "the merged graph is the base graph");
    }

    [TestMethod]
    public void Merge_PeftAdapterIntoPaddleStyleBase_EqualsInjectThenMerge()
    {
        // The base-model merge path (no manifest) injects slots, so it lifts and lowers Constant weights too.
        using var dir = new TempDir();
        string basePath = SaveBase(dir);
        string loraPath;
        using (Model model = OnnxReader.Load(basePath))
        {
            LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 2, Alpha = 4, Targets = ["linear_0", "linear_3"] });
            LoraTestSupport.RandomizeAdapters(model, manifest, seed: 5, scale: 0.3f);
            loraPath = LoraTestSupport.Save(model, dir, "lora.onnx");
        }

        Assert.AreEqual(0, CliRunner.Run("export-adapter", loraPath, "--peft", dir.File("peft")).ExitCode);
        Assert.AreEqual(0, CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("merged.onnx")).ExitCode);
        float error = LoraTestSupport.RelativeError(OrtRunner.Run(dir.File("merged.onnx")), OrtRunner.Run(loraPath));
        Assert.IsLessThanOrEqualTo(MergedRel, error);
        using Model merged = OnnxReader.Load(dir.File("merged.onnx"));
        Assert.AreEqual(0, merged.Graph.Initializers.Count, "Constant weights stay Constant nodes");
    }

    [TestMethod]
    public void Find_DequantizeLinearOfConstantNodes_FindsQuantizedLayer()
    {
        // tf2onnx's QDQ form: an int8 Constant and a float scale Constant feed DequantizeLinear, then MatMul.
        var b = new GraphBuilder("qdq", 13);
        Value x = b.Input("x", DataType.Float, "batch", 4);
        Value q = Constant(b, "dense.weight_quantized", InMemoryTensor.From<sbyte>("q", DataType.Int8, [4, 3], new sbyte[12]));
        Value scale = Constant(b, "dense.weight_scale", InMemoryTensor.Scalar("s", 0.1f));
        Value y = b.MatMul(x, b.Op("DequantizeLinear", [q, scale]));
        b.Output(y, "y", DataType.Float, "batch", 3);

        LinearTarget target = TargetDiscovery.Find(b.Model).Single();
        Assert.IsTrue(target.Quantized && target.WeightIsConstantNode);
        Assert.AreEqual((4L, 3L, DataType.Float), (target.InFeatures, target.OutFeatures, target.ActivationType));

        // A Reshape to a shape the data cannot take is not a weight view.
        Value bad = b.Op("Reshape", [Constant(b, "w2", InMemoryTensor.FromFloats("w", [12], new float[12])), Constant(b, "shape", InMemoryTensor.Int64Vector("shape", 5, -1))]);
        b.Output(b.MatMul(y, bad), "z", DataType.Float, "batch", 4);
        Assert.AreEqual(1, TargetDiscovery.Find(b.Model).Count, "a Reshape to [5, -1] of 12 elements is refused");
    }

    private static Value Constant(GraphBuilder b, string name, Onnx.Lora.Ir.Tensor tensor)
    {
        Value v = b.Op("Constant", [], [Attr.Tensor("value", tensor)]);
        v.Name = name;
        return v;
    }

    private static string SaveBase(TempDir dir)
    {
        using Model model = PaddleStyleBuilder.Build(new PaddleStyleConfig());
        string path = dir.File("base.onnx");
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.Inline });
        return path;
    }
}
