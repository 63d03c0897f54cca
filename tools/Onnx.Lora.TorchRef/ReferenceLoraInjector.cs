using Onnx.Lora.Graph;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.TorchRef;

/// <summary>
/// A deliberately plain LoRA injection used only to give the libtorch peer and ORT the same LoRA model before (and
/// independently of) the product's rewriter: for each target <c>y = MatMul(x, W)</c> it adds
/// <c>y' = y + Mul(MatMul(MatMul(x, A), B), scaling)</c> with A [in, r] = U(±1/√in) and B [r, out] = U(±0.05), both
/// seeded and NON-zero so the branch changes the output and every A and B gets a gradient. Names and manifest follow
/// the product contract (<c>&lt;module&gt;.lora_A.weight</c>, <see cref="LoraManifest"/>), so the peer reads models
/// made by the rewriter the same way.
/// </summary>
internal static class ReferenceLoraInjector
{
    /// <summary>PEFT's "all-linear": every projection inside the decoder layers; the classifier is left alone.</summary>
    public static bool IsAllLinearTarget(string module) => module.StartsWith("model.layers.", StringComparison.Ordinal);

    public static LoraManifest Inject(Model model, int rank, double alpha, int seed, Func<string, bool>? isTarget = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        isTarget ??= IsAllLinearTarget;
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        var rng = new Random(seed);
        var builder = new GraphBuilder(model);
        Onnx.Lora.Graph.Graph g = model.Graph;
        var modules = new List<LoraModuleInfo>();
        var scaling = alpha / rank;
        foreach (Node target in g.Nodes.ToList())
        {
            if (!target.Is("MatMul"))
            {
                continue;
            }

            string module = LlamaGraphFacts.ModuleOf(target.Name);
            if (!facts.Linears.TryGetValue(module, out LinearWeight? w) || w.NodeName != target.Name || !isTarget(module))
            {
                continue;
            }

            float bound = 1f / MathF.Sqrt(w.In);
            Value a = builder.Floats($"{module}.lora_A.weight", [w.In, rank], Uniform(rng, w.In * rank, bound));
            Value b = builder.Floats($"{module}.lora_B.weight", [rank, w.Out], Uniform(rng, rank * w.Out, 0.05f));
            Value scale = builder.Scalar($"{module}.lora_scaling", (float)scaling);
            string scope = "/" + module.Replace('.', '/') + "/lora";
            Value y = target.Outputs[0];
            var uses = y.Uses.ToList();
            Value xa = builder.MatMul(target.Inputs[0]!, a, $"{scope}/MatMul_A");
            Value xab = builder.MatMul(xa, b, $"{scope}/MatMul_B");
            Value scaled = builder.Mul(xab, scale, $"{scope}/Mul");
            Value sum = builder.Add(y, scaled, $"{scope}/Add");
            foreach (Usage use in uses)
            {
                use.Node.ReplaceInput(use.InputIndex, sum);
            }

            modules.Add(new LoraModuleInfo
            {
                Module = module,
                TargetNode = target.Name,
                BaseWeight = w.Initializer,
                Layout = WeightLayout.InOut,
                InFeatures = w.In,
                OutFeatures = w.Out,
                Rank = rank,
                Alpha = alpha,
                LoraA = a.Name,
                LoraB = b.Name,
                ScaleTensor = scale.Name,
            });
        }

        g.SortTopologically();
        var manifest = new LoraManifest { Placement = LoraPlacement.Initializers, Modules = modules };
        manifest.Write(model);
        return manifest;
    }

    private static float[] Uniform(Random rng, int count, float bound)
    {
        var data = new float[count];
        for (int i = 0; i < count; i++)
        {
            data[i] = (float)((rng.NextDouble() * 2) - 1) * bound;
        }

        return data;
    }
}
