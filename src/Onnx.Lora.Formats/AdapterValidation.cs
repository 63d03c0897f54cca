using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Formats;

/// <summary>Checks that adapters fit a serving model, and that adapters activated together do not collide.</summary>
public static partial class AdapterValidation
{
    /// <summary>
    /// Every parameter must be a graph input of <paramref name="servingModel"/> with the same element type, the same
    /// rank, and equal fixed dimensions (ORT rejects the rest at run time, or with "Invalid input name").
    /// </summary>
    /// <exception cref="AdapterMismatchException">The first parameter that does not fit, named with the adapter.</exception>
    public static void ValidateAgainstModel(AdapterFile adapter, Model servingModel, string adapterSource)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        ArgumentNullException.ThrowIfNull(servingModel);
        var inputs = servingModel.Graph.Inputs.ToDictionary(v => v.Name, StringComparer.Ordinal);
        var symbolic = new Dictionary<string, (long Size, string Parameter)>(StringComparer.Ordinal);
        foreach (AdapterParameter p in adapter.Parameters)
        {
            if (!inputs.TryGetValue(p.Name, out Value? input))
            {
                throw new AdapterMismatchException($"Parameter '{p.Name}' of adapter '{adapterSource}' is not an input of the serving model (ORT would fail with 'Invalid input name').");
            }

            if (input.ElementType != p.DataType)
            {
                throw new AdapterMismatchException($"Parameter '{p.Name}' of adapter '{adapterSource}' is {p.DataType.ShortName()}; the model input is {input.ElementType.ShortName()}.");
            }

            if (input.Shape is { } shape)
            {
                bool fits = shape.Count == p.Dims.Count && shape.Select((d, i) => !d.IsFixed || d.Value == p.Dims[i]).All(ok => ok);
                if (!fits)
                {
                    throw new AdapterMismatchException($"Parameter '{p.Name}' of adapter '{adapterSource}' has shape [{string.Join(",", p.Dims)}]; the model input is {shape}.");
                }

                // ORT holds a dim_param to ONE size per run ("Shape mismatch attempting to re-use buffer" otherwise).
                for (int i = 0; i < shape.Count; i++)
                {
                    if (shape[i].Param is { } param)
                    {
                        if (symbolic.TryGetValue(param, out var seen) && seen.Size != p.Dims[i])
                        {
                            throw new AdapterMismatchException($"Parameters '{seen.Parameter}' and '{p.Name}' of adapter '{adapterSource}' give the serving model's dimension '{param}' sizes {seen.Size} and {p.Dims[i]}; ORT needs one size per dimension name in a run. Give each module its own rank dimension (inject --adapter-slots and export-adapter --serving do) or use one rank.");
                        }

                        symbolic[param] = (p.Dims[i], p.Name);
                    }
                }
            }
        }
    }

    /// <summary>Refuses adapters that would be active together and share a parameter name: ORT silently lets the last one win.</summary>
    /// <exception cref="AdapterMismatchException">Two adapters share a parameter name.</exception>
    public static void CheckNoSharedNames(IEnumerable<(string Source, AdapterFile Adapter)> activeTogether)
    {
        ArgumentNullException.ThrowIfNull(activeTogether);
        var owner = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach ((string source, AdapterFile adapter) in activeTogether)
        {
            foreach (AdapterParameter p in adapter.Parameters)
            {
                if (!owner.TryAdd(p.Name, source))
                {
                    throw new AdapterMismatchException($"Adapters '{owner[p.Name]}' and '{source}' both set '{p.Name}'; ONNX Runtime would silently use only the last one. Combine them into one adapter instead.");
                }
            }
        }
    }

    /// <summary>
    /// Checks GenAI-named LoRA parameters (<c>model.layers.N.attn.q_proj.lora_A.weight</c>...) against a genai_config.json:
    /// layer index below num_hidden_layers, A:[in,r] and B:[r,out] with the same r, and in/out equal to what the
    /// config says for attention projections (hidden_size, heads × head_size) and consistent MLP widths.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A parameter does not fit; the message names it and the config value.</exception>
    public static void ValidateAgainstGenAiConfig(AdapterFile adapter, string genaiConfigPath, string adapterSource)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        GenAiDims dims = GenAiDims.Read(genaiConfigPath);
        var modules = new Dictionary<string, (AdapterParameter? A, AdapterParameter? B)>(StringComparer.Ordinal);
        foreach (AdapterParameter p in adapter.Parameters)
        {
            Match m = LoraName().Match(p.Name);
            if (!m.Success)
            {
                throw new AdapterMismatchException($"Parameter '{p.Name}' of adapter '{adapterSource}' is not named '<module>.lora_A.weight' or '<module>.lora_B.weight'.");
            }

            if (p.Dims.Count != 2)
            {
                throw new AdapterMismatchException($"Parameter '{p.Name}' of adapter '{adapterSource}' has rank {p.Dims.Count}; LoRA matrices are 2-D.");
            }

            string module = m.Groups["module"].Value;
            (AdapterParameter? a, AdapterParameter? b) = modules.GetValueOrDefault(module);
            modules[module] = m.Groups["ab"].Value == "A" ? (p, b) : (a, p);
        }

        long? intermediate = null;
        foreach ((string module, (AdapterParameter? a, AdapterParameter? b)) in modules)
        {
            if (a is null || b is null)
            {
                throw new AdapterMismatchException($"Module '{module}' of adapter '{adapterSource}' has only one of lora_A / lora_B.");
            }

            if (a.Dims[1] != b.Dims[0])
            {
                throw new AdapterMismatchException($"Module '{module}' of adapter '{adapterSource}': lora_A is [{a.Dims[0]},{a.Dims[1]}] and lora_B [{b.Dims[0]},{b.Dims[1]}]; their ranks differ.");
            }

            Match layer = LayerIndex().Match(module);
            if (layer.Success && dims.Layers is { } layers && int.Parse(layer.Groups[1].Value, CultureInfo.InvariantCulture) >= layers)
            {
                throw new AdapterMismatchException($"Module '{module}' of adapter '{adapterSource}' is in a layer the model does not have (num_hidden_layers = {layers} in '{genaiConfigPath}').");
            }

            (long? expectIn, long? expectOut) = dims.Expected(module.Split('.')[^1]);
            string What(string side, long got, long? want) =>
                $"Module '{module}' of adapter '{adapterSource}' has {side} features {got}; '{genaiConfigPath}' implies {want}.";
            if (expectIn is { } i && a.Dims[0] != i)
            {
                throw new AdapterMismatchException(What("in", a.Dims[0], i));
            }

            if (expectOut is { } o && b.Dims[1] != o)
            {
                throw new AdapterMismatchException(What("out", b.Dims[1], o));
            }

            // MLP width is not in genai_config: gate/up out and down in must agree with each other.
            long? width = module.EndsWith("down_proj", StringComparison.Ordinal) ? a.Dims[0]
                : module.EndsWith("gate_proj", StringComparison.Ordinal) || module.EndsWith("up_proj", StringComparison.Ordinal) ? b.Dims[1] : null;
            if (width is { } w)
            {
                if (intermediate is { } known && known != w)
                {
                    throw new AdapterMismatchException($"Module '{module}' of adapter '{adapterSource}' implies an MLP width of {w}; other MLP modules imply {known}.");
                }

                intermediate = w;
            }
        }
    }

    [GeneratedRegex(@"^(?<module>.+)\.lora_(?<ab>[AB])\.weight$")]
    private static partial Regex LoraName();

    [GeneratedRegex(@"layers\.(\d+)\.")]
    private static partial Regex LayerIndex();

    /// <summary>The few sizes of genai_config.json that LoRA shapes depend on.</summary>
    private sealed record GenAiDims(long? Hidden, long? Heads, long? KvHeads, long? HeadSize, int? Layers)
    {
        public static GenAiDims Read(string path)
        {
            try
            {
                using JsonDocument doc = JsonDocument.Parse(InputFile.ReadAllBytes(path, "genai_config", 16 << 20, m => new AdapterFormatException(m)));
                JsonElement model = doc.RootElement.GetProperty("model");
                JsonElement decoder = model.GetProperty("decoder");
                long? Get(JsonElement e, string name) => e.TryGetProperty(name, out JsonElement v) && v.TryGetInt64(out long x) ? x : null;
                long? headSize = Get(decoder, "head_size");
                long? kv = Get(decoder, "num_key_value_heads") ?? Get(decoder, "num_attention_heads");
                long? heads = Get(decoder, "num_attention_heads") ?? kv;
                long? hidden = Get(decoder, "hidden_size") ?? (heads * headSize);
                return new GenAiDims(hidden, heads, kv, headSize, (int?)Get(decoder, "num_hidden_layers"));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or InvalidOperationException)
            {
                throw new AdapterFormatException($"Cannot read genai_config '{path}': {e.Message}", e);
            }
        }

        public (long? In, long? Out) Expected(string projection) => projection switch
        {
            "q_proj" => (Hidden, Heads * HeadSize),
            "k_proj" or "v_proj" => (Hidden, KvHeads * HeadSize),
            "qkv_proj" => (Hidden, (Heads + (2 * KvHeads)) * HeadSize),
            "o_proj" => (Heads * HeadSize, Hidden),
            "gate_proj" or "up_proj" => (Hidden, null),
            "down_proj" => (null, Hidden),
            _ => (null, null),
        };
    }
}
