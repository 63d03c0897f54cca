using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

[TestClass]
public sealed class TargetSelectorTests
{
    private static IReadOnlyList<LinearTarget> s_targets = [];

    [ClassInitialize]
    public static void LoadTargets(TestContext context)
    {
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        s_targets = TargetDiscovery.Find(model);
    }

    private static string[] Select(LoraOptions options) => TargetSelector.Select(s_targets, options).Select(s => s.Target.Module).ToArray();

    [TestMethod]
    public void Select_SuffixNames_MatchLastComponentOrFullName()
    {
        string[] chosen = Select(new LoraOptions { Targets = ["q_proj", "model.layers.2.mlp.down_proj"] });
        Assert.AreEqual(6, chosen.Length);
        Assert.IsTrue(chosen.Count(m => m.EndsWith(".q_proj", StringComparison.Ordinal)) == 5);
        Assert.IsTrue(chosen.Contains("model.layers.2.mlp.down_proj"));
    }

    [TestMethod]
    public void Select_PartialComponent_DoesNotMatch()
    {
        // PEFT's suffix match is on whole components: "proj" is not a module name.
        Assert.ThrowsExactly<LoraOptionsException>(() => Select(new LoraOptions { Targets = ["proj"] }));
    }

    [TestMethod]
    public void Select_RegexAndExclude_Combine()
    {
        string[] chosen = Select(new LoraOptions { Targets = [], TargetRegex = @".*\.layers\.(0|1|4)\..*\.(q|v)_proj", Exclude = ["model.layers.4.self_attn.v_proj"] });
        CollectionAssert.AreEquivalent(
            new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.4.self_attn.q_proj" },
            chosen);
    }

    [TestMethod]
    public void Select_LmHeadByName_IsAllowedButNotInAllLinear()
    {
        Assert.IsFalse(Select(new LoraOptions()).Contains("lm_head"));
        CollectionAssert.AreEqual(new[] { "lm_head" }, Select(new LoraOptions { Targets = ["lm_head"] }));
    }

    [TestMethod]
    public void Select_RankAndAlphaPatterns_OverridePerModule()
    {
        var selected = TargetSelector.Select(s_targets, new LoraOptions
        {
            Rank = 8,
            Alpha = 16,
            RankPattern = [PatternOverride.Parse(@"layers\.0\.self_attn\.q_proj=2")],
            AlphaPattern = [PatternOverride.Parse("down_proj=3")],
        });
        Assert.AreEqual(2, selected.Single(s => s.Target.Module == "model.layers.0.self_attn.q_proj").Rank);
        Assert.AreEqual(8, selected.Single(s => s.Target.Module == "model.layers.1.self_attn.q_proj").Rank);
        Assert.IsTrue(selected.Where(s => s.Target.Module.EndsWith("down_proj", StringComparison.Ordinal)).All(s => s.Alpha == 3));
        Assert.IsTrue(selected.Where(s => !s.Target.Module.EndsWith("down_proj", StringComparison.Ordinal)).All(s => s.Alpha == 16));
    }

    [TestMethod]
    [DataRow("wq")]
    [DataRow("layers.9")]
    public void Select_UnknownTarget_ListsExistingModules(string target)
    {
        var e = Assert.ThrowsExactly<LoraOptionsException>(() => Select(new LoraOptions { Targets = [target] }));
        StringAssert.Contains(e.Message, target);
        StringAssert.Contains(e.Message, "model.layers.0.self_attn.q_proj");
        StringAssert.Contains(e.Message, "gate_proj");
    }

    [TestMethod]
    public void Select_PatternMatchingNothing_Throws()
    {
        var e = Assert.ThrowsExactly<LoraOptionsException>(() => Select(new LoraOptions { RankPattern = [PatternOverride.Parse("c_attn=4")] }));
        StringAssert.Contains(e.Message, "c_attn");
    }

    [TestMethod]
    public void Select_NoLinearLayers_SaysSo()
    {
        var e = Assert.ThrowsExactly<LoraOptionsException>(() => TargetSelector.Select([], new LoraOptions()));
        StringAssert.Contains(e.Message, "no linear layer");
    }

    [TestMethod]
    [DataRow(0, 0.0)]
    [DataRow(-3, 0.0)]
    [DataRow(8, 1.0)]
    [DataRow(8, -0.1)]
    public void Validate_OutOfRange_Throws(int rank, double dropout)
    {
        Assert.ThrowsExactly<LoraOptionsException>(() => new LoraOptions { Rank = rank, Dropout = dropout }.Validate());
    }

    [TestMethod]
    [DataRow("3-1")]
    [DataRow("a")]
    [DataRow("")]
    public void ParseLayers_Malformed_Throws(string text) => Assert.ThrowsExactly<LoraOptionsException>(() => LoraOptions.ParseLayers(text));

    [TestMethod]
    public void ParseLayers_RangesAndIndices_AreExpanded() => CollectionAssert.AreEqual(new[] { 0, 1, 2, 3, 7 }, LoraOptions.ParseLayers("0-3,7").ToArray());

    [TestMethod]
    public void Find_LoraModel_DoesNotListLoraMatMuls()
    {
        using Model model = TestGraphs.MatMul();
        Onnx.Lora.Injection.LoraInjector.Inject(model, new LoraOptions());
        Assert.AreEqual(1, TargetDiscovery.Find(model).Count);
    }

    [TestMethod]
    public void Match_AttentionScoreMatMul_FailsWithReason()
    {
        var b = new GraphBuilder("scores");
        Value q = b.Input("q", DataType.Float, 1, 4, 8);
        Value k = b.Input("k", DataType.Float, 1, 8, 4);
        b.Output(b.MatMul(q, k, "/model/layers.0/self_attn/MatMul"), "s", DataType.Float, 1, 4, 4);
        MatchResult<LinearTarget> result = TargetDiscovery.Match(b.Graph.Nodes[0]);
        Assert.IsFalse(result.Success);
        StringAssert.Contains(result.Reason, "graph input");
    }

    [TestMethod]
    public void Find_TiedEmbeddingHead_IsOutputHeadAndNotInAllLinear()
    {
        // Tied embeddings: the table feeds the Gather and, transposed, the last MatMul (whose output is not named logits).
        var b = new GraphBuilder("tied");
        Value ids = b.Input("input_ids", DataType.Int64, 1, 3);
        Value table = b.Floats("model.embed_tokens.weight", [10, 4], LoraTestSupport.Random(40, 1));
        Value h = b.Op("Gather", [table, ids]);
        h = b.MatMul(h, b.Floats("model.layers.0.mlp.up_proj.weight", [4, 4], LoraTestSupport.Random(16, 2)), "/model/layers.0/mlp/up_proj/MatMul");
        b.Output(b.MatMul(h, b.Transpose(table, [1, 0]), "/MatMul"), "scores", DataType.Float, 1, 3, 10);
        IReadOnlyList<LinearTarget> targets = TargetDiscovery.Find(b.Model);
        Assert.AreEqual(2, targets.Count);
        LinearTarget head = targets.Single(t => t.IsOutputHead);
        Assert.AreEqual(WeightLayout.OutIn, head.Layout);
        Assert.AreEqual(4, head.InFeatures);
        Assert.AreEqual(10, head.OutFeatures);
        CollectionAssert.AreEqual(new[] { "model.layers.0.mlp.up_proj" }, TargetSelector.Select(targets, new LoraOptions()).Select(s => s.Target.Module).ToArray());
    }
}
