using System.Text.RegularExpressions;
using Onnx.Lora.Ir;
using Onnx.Lora.Formats.Peft;

namespace Onnx.Lora.Formats;

/// <summary>
/// Loads an adapter from whichever file the user has, by module name (no model needed): a PEFT folder, a PEFT
/// safetensors file (adapter_config.json beside it), or an <c>.onnx_adapter</c> / legacy GenAI file whose tensors are
/// named <c>&lt;module&gt;.lora_A.weight</c> [in, r] and <c>&lt;module&gt;.lora_B.weight</c> [r, out] with the scale folded in.
/// </summary>
public static partial class AdapterLoader
{
    /// <summary>Loads the adapter at <paramref name="path"/>.</summary>
    /// <exception cref="AdapterFormatException">The file is missing, malformed, or its tensor names are not LoRA names.</exception>
    public static LoraWeights Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
        {
            // An empty safetensors file is refused by the importer itself.
            return PeftAdapter.Import(path);
        }

        if (!File.Exists(path))
        {
            throw new AdapterFormatException($"Adapter '{path}' does not exist (expected a PEFT folder, a .safetensors file or an .onnx_adapter file).");
        }

        LoraWeights weights = path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)
            ? PeftAdapter.ImportFile(path)
            : FromNamedAdapter(OnnxAdapterFormat.Read(path), path);
        return weights.Modules.Count > 0 ? weights
            : throw new AdapterFormatException($"Adapter '{path}' holds no tensors: a LoRA adapter needs lora_A and lora_B weights.");
    }

    /// <summary>Groups the tensors of an adapter file into modules by name (scale 1: B is already scaled).</summary>
    /// <exception cref="AdapterFormatException">A tensor is not a LoRA tensor, a module lacks A or B, or shapes disagree.</exception>
    public static LoraWeights FromNamedAdapter(AdapterFile adapter, string source)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        var pairs = new Dictionary<string, (AdapterParameter? A, AdapterParameter? B)>(StringComparer.Ordinal);
        var order = new List<string>();
        foreach (AdapterParameter p in adapter.Parameters)
        {
            Match m = LoraName().Match(p.Name);
            if (!m.Success)
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' of adapter '{source}' is not named '<module>.lora_A.weight' or '<module>.lora_B.weight'.");
            }

            string module = m.Groups["module"].Value;
            if (!pairs.TryGetValue(module, out var pair))
            {
                order.Add(module);
            }

            pairs[module] = m.Groups["ab"].Value == "A" ? (p, pair.B) : (pair.A, p);
        }

        var modules = new List<LoraModuleWeights>();
        foreach (string module in order)
        {
            (AdapterParameter? a, AdapterParameter? b) = pairs[module];
            if (a is null || b is null)
            {
                throw new AdapterFormatException($"Module '{module}' of adapter '{source}' has only one of lora_A / lora_B.");
            }

            if (a.Dims.Count != 2 || b.Dims.Count != 2 || a.Dims[1] != b.Dims[0])
            {
                throw new AdapterFormatException($"Module '{module}' of adapter '{source}': lora_A is [{string.Join(",", a.Dims)}] and lora_B [{string.Join(",", b.Dims)}]; expected [in, r] and [r, out].");
            }

            if (a.Dims.Concat(b.Dims).Any(d => d is <= 0 or > int.MaxValue))
            {
                throw new AdapterFormatException($"Module '{module}' of adapter '{source}': lora_A is [{string.Join(",", a.Dims)}] and lora_B [{string.Join(",", b.Dims)}]; every dimension must be between 1 and {int.MaxValue}.");
            }

            modules.Add(new LoraModuleWeights(module, (int)a.Dims[0], (int)b.Dims[1], (int)a.Dims[1], Floats(a, source), Floats(b, source), 1f));
        }

        return new LoraWeights(modules);
    }

    private static float[] Floats(AdapterParameter p, string source)
    {
        if (!LoraTensorTypes.IsAccepted(p.DataType))
        {
            throw new AdapterFormatException($"Parameter '{p.Name}' of adapter '{source}' is {p.DataType.ShortName()}; LoRA weights must be {LoraTensorTypes.Accepted}.");
        }

        return p.ToFloat32();
    }

    /// <summary>The adapter file for <paramref name="weights"/> named by module (A [in, r], B [r, out] scaled), without a serving model.</summary>
    /// <exception cref="AdapterMismatchException">A module uses DoRA (not expressible as an additive adapter).</exception>
    public static AdapterFile ToNamedAdapter(LoraWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        var parameters = new List<AdapterParameter>();
        foreach (LoraModuleWeights m in weights.Modules)
        {
            if (m.Magnitude is not null)
            {
                throw new AdapterMismatchException($"Module '{m.Module}' uses DoRA; an additive adapter file cannot express it. Merge instead.");
            }

            parameters.Add(AdapterParameter.FromFloats(m.Module + ".lora_A.weight", [m.InFeatures, m.Rank], m.A));
            parameters.Add(AdapterParameter.FromFloats(m.Module + ".lora_B.weight", [m.Rank, m.OutFeatures], m.ScaledB()));
        }

        return new AdapterFile { Parameters = parameters };
    }

    [GeneratedRegex(@"^(?<module>.+)\.lora_(?<ab>[AB])\.weight$")]
    private static partial Regex LoraName();
}
