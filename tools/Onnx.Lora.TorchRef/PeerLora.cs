using Onnx.Lora.Ir;
using Onnx.Lora.Injection;

namespace Onnx.Lora.TorchRef;

/// <summary>
/// The LoRA model both peers train: the product's injection (<see cref="LoraInjector.Inject"/>, PEFT "all-linear",
/// A from its seeded kaiming-uniform init), then B overwritten with seeded U(±0.05). PEFT starts B at zero, which
/// would make every A gradient zero and the parity check of A vacuous; a non-zero B makes the branch change the
/// output and gives every A and B a gradient. The libtorch peer reads A, B and the scaling from the manifest.
/// </summary>
internal static class PeerLora
{
    public static LoraManifest Inject(Model model, int rank, double alpha, int seed)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = rank, Alpha = alpha, Seed = seed, Targets = [LoraOptions.AllLinear] });
        var rng = new Random(seed);
        foreach (LoraModuleInfo module in manifest.Modules)
        {
            Tensor b = model.Graph.Initializers[module.LoraB].Initializer!;
            model.Graph.Initializers.SetData(module.LoraB, InMemoryTensor.FromFloats(module.LoraB, [.. b.Dims], Uniform(rng, (int)b.Dims.Aggregate(1L, (x, d) => x * d), 0.05f)));
        }

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
