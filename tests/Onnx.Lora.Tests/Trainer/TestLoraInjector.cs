using System.Text.RegularExpressions;
using Onnx.Lora.Graph;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Stand-in for the rewriter until it lands: adds y = x·W + scale·(x·A)·B on the projection MatMuls of a torch-style
/// graph, following the <see cref="LoraManifest"/> contract (A [in, r], B [r, out] float32 initializers named
/// <c>&lt;module&gt;.lora_A.weight</c> / <c>.lora_B.weight</c>, scale initializer, manifest in metadata).
/// </summary>
internal static partial class TestLoraInjector
{
    [GeneratedRegex(@"^/model/layers\.(\d+)/(self_attn|attn|mlp)/(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)/MatMul(_Q4)?$")]
    private static partial Regex ModuleNode();

    public static LoraManifest Inject(Model model, int rank, double alpha, int seed, bool nonZeroB)
    {
        var rng = new Random(seed);
        var builder = new GraphBuilder(model);
        var modules = new List<LoraModuleInfo>();
        foreach (Node node in model.Graph.Nodes.ToArray())
        {
            Match m = ModuleNode().Match(node.Name);
            bool nbits = node.Is("MatMulNBits", "com.microsoft");
            if (!(node.Is("MatMul") || nbits) || !m.Success || node.Inputs[1]?.Initializer is not { } w || (!nbits && w.Dims.Count != 2))
            {
                continue;
            }

            string module = $"model.layers.{m.Groups[1].Value}.{m.Groups[2].Value}.{m.Groups[3].Value}";
            long inF = nbits ? node.GetInt("K", 0) : w.Dims[0], outF = nbits ? node.GetInt("N", 0) : w.Dims[1];
            float[] a = Enumerable.Range(0, (int)(inF * rank)).Select(_ => (float)((rng.NextDouble() * 2 - 1) / Math.Sqrt(inF))).ToArray();
            float[] b = Enumerable.Range(0, (int)(rank * outF)).Select(_ => nonZeroB ? (float)((rng.NextDouble() * 2 - 1) * 0.1) : 0f).ToArray();
            Value y = node.Outputs[0];
            Value aV = builder.Floats(module + ".lora_A.weight", [inF, rank], a);
            Value bV = builder.Floats(module + ".lora_B.weight", [rank, outF], b);
            Value scale = builder.Scalar(module + ".lora_scale", (float)(alpha / rank));
            var usages = y.Uses.ToArray();
            Value delta = builder.Mul(builder.MatMul(builder.MatMul(node.Inputs[0]!, aV), bV), scale);
            Value sum = builder.Add(y, delta);
            foreach (Usage u in usages)
            {
                u.Node.ReplaceInput(u.InputIndex, sum);
            }

            modules.Add(new LoraModuleInfo
            {
                Module = module, TargetNode = node.Name, BaseWeight = w.Name, Layout = nbits ? WeightLayout.MatMulNBits : WeightLayout.InOut,
                InFeatures = inF, OutFeatures = outF, Rank = rank, Alpha = alpha,
                LoraA = aV.Name, LoraB = bV.Name, ScaleTensor = scale.Name, LayerIndex = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture),
            });
        }

        model.Graph.SortTopologically();
        var manifest = new LoraManifest { Placement = LoraPlacement.Initializers, Modules = modules };
        manifest.Write(model);
        return manifest;
    }
}
