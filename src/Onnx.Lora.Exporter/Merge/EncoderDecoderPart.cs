using Onnx.Lora.Formats;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>
/// One adapter trained over an encoder-decoder (<c>train --task seq2seq-lm</c>, or PEFT on a
/// <c>*ForConditionalGeneration</c>) holds the LoRA of both stacks, while the export ships them as two files. Merging
/// it into one part takes that part's modules only: the encoder's (a module path with an <c>encoder</c> component) into
/// <c>encoder_model.onnx</c>, the rest into the decoder. Optimum exports the encoder module alone, so its layers are
/// named without the <c>model.encoder.</c> scope PEFT's names carry; the scope is dropped where the part lacks it.
/// </summary>
public static class EncoderDecoderPart
{
    /// <summary>
    /// The modules of <paramref name="weights"/> that belong to <paramref name="model"/>, named as its layers are,
    /// when <paramref name="model"/> is one part of an encoder-decoder export and the adapter covers both; otherwise
    /// <paramref name="weights"/> unchanged.
    /// </summary>
    /// <param name="model">The base model being merged into.</param>
    /// <param name="weights">The adapter's modules.</param>
    /// <param name="modelModules">Module names of <paramref name="model"/>'s layers.</param>
    /// <param name="otherPart">The modules left for the other part (0 when the model is not a part).</param>
    public static LoraWeights Select(Model model, LoraWeights weights, IReadOnlyList<string> modelModules, out int otherPart)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(modelModules);
        otherPart = 0;
        // Both stacks by name: an encoder-only model's adapter (BERT's encoder.layer.N plus a classifier) is not split.
        bool coversBoth = weights.Modules.Any(m => IsEncoderModule(m.Module)) && weights.Modules.Any(m => HasComponent(m.Module, "decoder"));
        Graph graph = model.Graph;
        bool decoder = graph.Inputs.Any(v => v.Name == "encoder_hidden_states");
        bool encoder = !decoder && graph.Outputs.Any(v => v.Name == "last_hidden_state") && !graph.Outputs.Any(v => v.Name == "logits");
        if (!coversBoth || !(encoder || decoder))
        {
            return weights;
        }

        var known = new HashSet<string>(modelModules, StringComparer.Ordinal);
        var selected = new List<LoraModuleWeights>();
        foreach (LoraModuleWeights m in weights.Modules)
        {
            if (IsEncoderModule(m.Module) != encoder)
            {
                otherPart++;
                continue;
            }

            selected.Add(encoder && !known.Contains(m.Module) && WithoutEncoderScope(m.Module) is { } local && known.Contains(local) ? m with { Module = local } : m);
        }

        return new LoraWeights(selected);
    }

    private static bool IsEncoderModule(string module) => HasComponent(module, "encoder");

    private static bool HasComponent(string module, string component) => module.Split('.').Contains(component, StringComparer.Ordinal);

    // "model.encoder.layers.0.self_attn.q_proj" → "layers.0.self_attn.q_proj".
    private static string? WithoutEncoderScope(string module)
    {
        int at = module.IndexOf("encoder.", StringComparison.Ordinal);
        while (at > 0 && module[at - 1] != '.')
        {
            at = module.IndexOf("encoder.", at + 1, StringComparison.Ordinal);
        }

        return at < 0 ? null : module[(at + "encoder.".Length)..];
    }
}
