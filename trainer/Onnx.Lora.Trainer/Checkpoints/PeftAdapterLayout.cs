using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>
/// Converts the training graph's LoRA tensors (MatMul layout A:[in,r], B:[r,out], scale NOT folded in: the
/// <see cref="LoraPlacement.Initializers"/> placement) to PEFT's layout: keys
/// <c>base_model.model.&lt;module&gt;.lora_A.weight</c> [r,in] and <c>.lora_B.weight</c> [out,r] (torch Linear),
/// and writes the matching adapter_config.json. Only transposes happen, so the conversion is exact.
/// </summary>
/// <remarks>NOTE: a stop-gap until the exporter's PEFT writer lands on main; the checkpoint format does not depend on it.</remarks>
internal static class PeftAdapterLayout
{
    /// <summary>PEFT tensors for <paramref name="parameters"/> (looked up by the manifest's tensor names).</summary>
    /// <exception cref="CheckpointException">A tensor the manifest names is missing or has the wrong shape.</exception>
    public static List<NamedTensor> ToPeftTensors(LoraManifest manifest, IReadOnlyList<NamedTensor> parameters)
    {
        var byName = parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
        var result = new List<NamedTensor>();
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            NamedTensor a = Get(byName, m.LoraA, [m.InFeatures, m.Rank]);
            NamedTensor b = Get(byName, m.LoraB, [m.Rank, m.OutFeatures]);
            string prefix = "base_model.model." + m.Module;
            result.Add(new NamedTensor(prefix + ".lora_A.weight", [m.Rank, m.InFeatures], Transpose(a.Data, (int)m.InFeatures, m.Rank)));
            result.Add(new NamedTensor(prefix + ".lora_B.weight", [m.OutFeatures, m.Rank], Transpose(b.Data, m.Rank, (int)m.OutFeatures)));
            if (m.Magnitude is not null)
            {
                NamedTensor mag = Get(byName, m.Magnitude, [m.OutFeatures]);
                result.Add(new NamedTensor(prefix + ".lora_magnitude_vector", [m.OutFeatures], (float[])mag.Data.Clone()));
            }
        }

        return result;
    }

    /// <summary>adapter_config.json text for <paramref name="manifest"/>.</summary>
    public static string ConfigJson(LoraManifest manifest, string? baseModelName)
    {
        LoraModuleInfo first = manifest.Modules.Count > 0 ? manifest.Modules[0]
            : throw new CheckpointException("The LoRA manifest has no modules; there is no adapter to save.");
        var rankPattern = new JsonObject();
        var alphaPattern = new JsonObject();
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            if (m.Rank != first.Rank)
            {
                rankPattern[m.Module] = m.Rank;
            }

            if (m.Alpha != first.Alpha)
            {
                alphaPattern[m.Module] = m.Alpha;
            }
        }

        // PEFT matches target_modules by module-name suffix; the last name component is what PEFT users write.
        string[] targets = manifest.Modules.Select(m => m.Module[(m.Module.LastIndexOf('.') + 1)..]).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = baseModelName,
            ["r"] = first.Rank,
            ["lora_alpha"] = first.Alpha,
            ["lora_dropout"] = manifest.Dropout,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode)t).ToArray()),
            ["use_rslora"] = first.UseRsLora,
            ["use_dora"] = manifest.UseDora,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["modules_to_save"] = null,
            ["rank_pattern"] = rankPattern,
            ["alpha_pattern"] = alphaPattern,
            ["revision"] = null,
        };
        return config.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static NamedTensor Get(Dictionary<string, NamedTensor> byName, string name, long[] shape)
    {
        if (!byName.TryGetValue(name, out NamedTensor? t))
        {
            throw new CheckpointException($"Trainable tensor '{name}' named by the LoRA manifest is missing from the parameters.");
        }

        if (!t.Shape.SequenceEqual(shape))
        {
            throw new CheckpointException(string.Create(CultureInfo.InvariantCulture,
                $"Trainable tensor '{name}' has shape [{string.Join(",", t.Shape)}]; the manifest expects [{string.Join(",", shape)}]."));
        }

        return t;
    }

    private static float[] Transpose(float[] source, int rows, int cols)
    {
        var result = new float[source.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                result[(c * rows) + r] = source[(r * cols) + c];
            }
        }

        return result;
    }
}
