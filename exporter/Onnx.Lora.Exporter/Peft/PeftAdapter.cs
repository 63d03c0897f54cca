using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Onnx.Lora.Exporter.Formats;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Rewriter;
using Onnx.Lora.Graph.IO;

namespace Onnx.Lora.Exporter.Peft;

/// <summary>The fields of PEFT's adapter_config.json that decide the numbers.</summary>
public sealed record PeftConfig
{
    /// <summary>Default rank r.</summary>
    public required int R { get; init; }

    /// <summary>Default lora_alpha.</summary>
    public required double LoraAlpha { get; init; }

    /// <summary>Scale alpha/√r instead of alpha/r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>DoRA.</summary>
    public bool UseDora { get; init; }

    /// <summary>Per-module rank overrides (key: a module-name suffix or regex, as PEFT matches it).</summary>
    public IReadOnlyDictionary<string, int> RankPattern { get; init; } = new Dictionary<string, int>();

    /// <summary>Per-module alpha overrides.</summary>
    public IReadOnlyDictionary<string, double> AlphaPattern { get; init; } = new Dictionary<string, double>();

    /// <summary>The target module names (leaf names, e.g. q_proj).</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = [];

    /// <summary>True when target_modules is a list (even an empty one); false when absent or a string.</summary>
    public bool TargetModulesGiven { get; init; }

    /// <summary>target_modules given as one string: a regex matched against the whole module name, or "all-linear".</summary>
    public string? TargetModulesPattern { get; init; }

    /// <summary>lora_dropout.</summary>
    public double LoraDropout { get; init; }

    /// <summary>base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>task_type.</summary>
    public string TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>The rank of <paramref name="module"/> after rank_pattern.</summary>
    public int RankOf(string module) => Pattern(RankPattern, module) ?? R;

    /// <summary>The alpha of <paramref name="module"/> after alpha_pattern.</summary>
    public double AlphaOf(string module) => Pattern(AlphaPattern, module) ?? LoraAlpha;

    /// <summary>The scale PEFT applies to B·A for <paramref name="module"/> with rank <paramref name="rank"/>.</summary>
    public double ScaleOf(string module, int rank) => UseRsLora ? AlphaOf(module) / Math.Sqrt(rank) : AlphaOf(module) / rank;

    /// <summary>Time one rank_pattern / alpha_pattern regex may take on one module name (config files come from the internet).</summary>
    internal static readonly TimeSpan PatternTimeout = TimeSpan.FromMilliseconds(200);

    /// <summary>The regex PEFT builds from a pattern key.</summary>
    /// <exception cref="ArgumentException">The key is not a valid regex.</exception>
    internal static Regex PatternRegex(string key) => new("^(.*\\.)?" + key + "$", RegexOptions.CultureInvariant, PatternTimeout);

    // PEFT: a pattern key matches when the module name ends with ".key" or equals it, else as a full regex.
    private static T? Pattern<T>(IReadOnlyDictionary<string, T> patterns, string module) where T : struct
    {
        foreach ((string key, T value) in patterns)
        {
            if (module == key || module.EndsWith("." + key, StringComparison.Ordinal) || Matches(key, module))
            {
                return value;
            }
        }

        return null;
    }

    private static bool Matches(string key, string module)
    {
        try
        {
            return PatternRegex(key).IsMatch(module);
        }
        catch (ArgumentException e)
        {
            throw new AdapterFormatException($"PEFT config pattern '{key}' is not a valid regex: {e.Message}", e);
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new AdapterFormatException($"PEFT config pattern '{key}' took over {PatternTimeout.TotalMilliseconds} ms on module '{module}' (a pathological regex).", e);
        }
    }
}

/// <summary>
/// PEFT adapters: adapter_model.safetensors with keys <c>base_model.model.&lt;module&gt;.lora_A.weight</c> [r, in],
/// <c>.lora_B.weight</c> [out, r] (torch Linear layout, scale not folded), DoRA <c>.lora_magnitude_vector</c> [out],
/// and adapter_config.json.
/// </summary>
public static class PeftAdapter
{
    /// <summary>safetensors file name PEFT uses.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>Config file name PEFT uses.</summary>
    public const string ConfigFile = "adapter_config.json";

    private const string KeyPrefix = "base_model.model.";

    private const long MaxConfigBytes = 1 << 20;

    /// <summary>Writes <paramref name="weights"/> as a PEFT adapter folder (both files atomically; the scale is stored in the config, not in B).</summary>
    /// <exception cref="AdapterFormatException">Modules disagree on alpha/scale in a way the config cannot express.</exception>
    public static void Export(LoraWeights weights, string folder, string? baseModelNameOrPath = null, bool useRsLora = false, double dropout = 0)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(folder);
        var tensors = new List<SafetensorsTensor>();
        var rankPattern = new Dictionary<string, int>(StringComparer.Ordinal);
        var alphaPattern = new Dictionary<string, double>(StringComparer.Ordinal);
        int defaultRank = weights.Modules.Count == 0 ? 8 : weights.Modules.GroupBy(m => m.Rank).MaxBy(g => g.Count())!.Key;
        var alphas = weights.Modules.Select(m => (m.Module, Alpha: AlphaFor(m, useRsLora))).ToList();
        double defaultAlpha = alphas.Count == 0 ? 8 : alphas.GroupBy(a => a.Alpha).MaxBy(g => g.Count())!.Key;
        foreach (LoraModuleWeights m in weights.Modules)
        {
            string key = KeyPrefix + m.Module;
            (string aKey, long[] aDims, string bKey, long[] bDims) = PeftTensorForm.Of(m);
            tensors.Add(SafetensorsTensor.FromFloats(key + aKey, aDims, Transpose(m.A, m.InFeatures, m.Rank)));
            tensors.Add(SafetensorsTensor.FromFloats(key + bKey, bDims, Transpose(m.B, m.Rank, m.OutFeatures)));
            if (m.Magnitude is { } mag)
            {
                tensors.Add(SafetensorsTensor.FromFloats(key + ".lora_magnitude_vector", [m.OutFeatures], mag));
            }

            if (m.Rank != defaultRank)
            {
                rankPattern[m.Module] = m.Rank;
            }

            double alpha = AlphaFor(m, useRsLora);
            if (alpha != defaultAlpha)
            {
                alphaPattern[m.Module] = alpha;
            }
        }

        var targets = weights.Modules.Select(m => m.Module.Split('.')[^1]).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var config = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(alphaPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["lora_alpha"] = defaultAlpha,
            ["lora_dropout"] = dropout,
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = defaultRank,
            ["rank_pattern"] = new JsonObject(rankPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
            ["revision"] = null,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode?)t).ToArray()),
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = weights.Modules.Any(m => m.Magnitude is not null),
            ["use_rslora"] = useRsLora,
        };
        // The config goes last: it is what marks the folder as an adapter, so a kill mid-export never leaves a
        // config beside weights of another export (AtomicFileBatch removes the old config before any rename).
        using var batch = new AtomicFileBatch();
        string weightsPath = Path.Combine(folder, WeightsFile);
        batch.Add(weightsPath, s => SafetensorsWriter.Write(s, weightsPath, tensors));
        batch.Add(Path.Combine(folder, ConfigFile), s => s.Write(System.Text.Encoding.UTF8.GetBytes(config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }))));
        batch.Commit();

        // PEFT stores alpha; our scale may be anything (e.g. folded): alpha = scale·r (or scale·√r for rsLoRA).
        static double AlphaFor(LoraModuleWeights m, bool rs) => Math.Round(m.Scale * (rs ? Math.Sqrt(m.Rank) : m.Rank), 6);
    }

    /// <summary>Reads adapter_config.json.</summary>
    /// <exception cref="AdapterFormatException">Missing or malformed, or not a LoRA adapter.</exception>
    public static PeftConfig ReadConfig(string folder)
    {
        string path = Path.Combine(folder, ConfigFile);
        try
        {
            if (!File.Exists(path))
            {
                throw new AdapterFormatException($"PEFT config '{path}' does not exist (a PEFT adapter needs adapter_config.json beside its safetensors file).");
            }

            // Real configs are a few KB (tens with a per-module rank_pattern); a huge one would cost ~20× its size to parse.
            string text = InputFile.ReadAllText(path, "PEFT config", MaxConfigBytes, m => new AdapterFormatException(m), "an adapter_config.json is a few KB");
            JsonNode root = JsonNode.Parse(text) ?? throw new AdapterFormatException($"PEFT config '{path}' is empty.");
            if (root is not JsonObject)
            {
                throw new AdapterFormatException($"PEFT config '{path}' is a JSON {root.GetValueKind()}; expected an object.");
            }

            string? type = root["peft_type"] switch
            {
                null => null,
                JsonValue v when v.TryGetValue(out string? t) => t,
                JsonNode other => throw new AdapterFormatException($"PEFT config '{path}': 'peft_type' is {Abbreviate(other.ToJsonString())}; expected a string."),
            };
            if (type is not null && type != "LORA")
            {
                throw new AdapterFormatException($"PEFT config '{path}' has peft_type '{type}'; only LORA is supported.");
            }

            if (Field<bool>(root, "fan_in_fan_out", path) == true)
            {
                throw new AdapterFormatException($"PEFT config '{path}' has fan_in_fan_out true (Conv1D weights); not supported.");
            }

            if (root["target_modules"] is { } targetModules && targetModules is not JsonArray && !(targetModules is JsonValue tv && tv.TryGetValue(out string? _)))
            {
                throw new AdapterFormatException($"PEFT config '{path}': 'target_modules' is {Abbreviate(targetModules.ToJsonString())}; expected a list of module names or a regex string.");
            }

            var config = new PeftConfig
            {
                R = Field<int>(root, "r", path) ?? throw new AdapterFormatException($"PEFT config '{path}' has no 'r'."),
                LoraAlpha = Field<double>(root, "lora_alpha", path) ?? throw new AdapterFormatException($"PEFT config '{path}' has no 'lora_alpha'."),
                UseRsLora = Field<bool>(root, "use_rslora", path) ?? false,
                UseDora = Field<bool>(root, "use_dora", path) ?? false,
                RankPattern = PatternMap<int>(root, "rank_pattern", path),
                AlphaPattern = PatternMap<double>(root, "alpha_pattern", path),
                TargetModules = root["target_modules"] is JsonArray arr ? arr.Select((n, i) => n is JsonValue v && v.TryGetValue(out string? t) ? t : throw new AdapterFormatException($"PEFT config '{path}': target_modules[{i}] is not a string.")).ToList() : [],
                TargetModulesGiven = root["target_modules"] is JsonArray,
                TargetModulesPattern = root["target_modules"] is JsonValue tm && tm.TryGetValue(out string? pattern) ? pattern : null,
                LoraDropout = Field<double>(root, "lora_dropout", path) ?? 0,
                BaseModelNameOrPath = root["base_model_name_or_path"] is JsonValue b && b.TryGetValue(out string? baseModel) ? baseModel : null,
                TaskType = root["task_type"] is JsonValue tt && tt.TryGetValue(out string? task) ? task : "CAUSAL_LM",
            };
            if (config.R <= 0 || config.RankPattern.Any(p => p.Value <= 0))
            {
                throw new AdapterFormatException($"PEFT config '{path}': 'r' and every rank_pattern value must be positive (r = {config.R}).");
            }

            if (!double.IsFinite(config.LoraAlpha) || config.AlphaPattern.Any(p => !double.IsFinite(p.Value)))
            {
                throw new AdapterFormatException($"PEFT config '{path}': 'lora_alpha' and every alpha_pattern value must be finite numbers.");
            }

            return config;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or InvalidOperationException or FormatException or ArgumentException)
        {
            throw new AdapterFormatException($"Cannot read PEFT config '{path}': {e.Message}", e);
        }
    }

    // A present field of the wrong JSON type is an error naming the field; null or absent means "not given".
    private static T? Field<T>(JsonNode root, string name, string path) where T : struct
    {
        JsonNode? node = root[name];
        if (node is null)
        {
            return null;
        }

        return node is JsonValue v && v.TryGetValue(out T value)
            ? value
            : throw new AdapterFormatException($"PEFT config '{path}': '{name}' is {Abbreviate(node.ToJsonString())}; expected a {typeof(T).Name.ToLowerInvariant()}.");
    }

    // A hostile value can be megabytes long; the message needs only its start.
    private static string Abbreviate(string json) => json.Length <= 80 ? json : json[..77] + "...";

    private static Dictionary<string, T> PatternMap<T>(JsonNode root, string name, string path) where T : struct
    {
        var result = new Dictionary<string, T>(StringComparer.Ordinal);
        if (root[name] is null)
        {
            return result;
        }

        if (root[name] is not JsonObject map)
        {
            throw new AdapterFormatException($"PEFT config '{path}': '{name}' must be an object of module pattern → value.");
        }

        foreach ((string key, JsonNode? value) in map)
        {
            try
            {
                _ = PeftConfig.PatternRegex(key);
            }
            catch (ArgumentException e)
            {
                throw new AdapterFormatException($"PEFT config '{path}': {name} key '{key}' is not a valid regex: {e.Message}", e);
            }

            result[key] = value is JsonValue v && v.TryGetValue(out T parsed)
                ? parsed
                : throw new AdapterFormatException($"PEFT config '{path}': {name}['{key}'] is {value?.ToJsonString() ?? "null"}; expected a {typeof(T).Name.ToLowerInvariant()}.");
        }

        return result;
    }

    /// <summary>
    /// Imports a PEFT adapter folder into MatMul-layout weights (A [in, r], B [r, out], scale from the config incl.
    /// rank_pattern/alpha_pattern/rsLoRA). With <paramref name="modules"/> given, every key must match one of them.
    /// </summary>
    /// <exception cref="AdapterFormatException">The files are malformed or keys are not PEFT LoRA keys.</exception>
    /// <exception cref="AdapterMismatchException">A key matches no module of the model, or shapes differ from it.</exception>
    public static LoraWeights Import(string folder, IReadOnlyList<LoraModuleInfo>? modules = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        return ImportFile(Path.Combine(folder, WeightsFile), modules);
    }

    /// <summary>
    /// Imports a PEFT safetensors file whose adapter_config.json lies in the same folder (the file may have any name,
    /// e.g. a renamed download). See <see cref="Import"/>.
    /// </summary>
    /// <exception cref="AdapterFormatException">The files are malformed or keys are not PEFT LoRA keys.</exception>
    /// <exception cref="AdapterMismatchException">A key matches no module of the model, or shapes differ from it.</exception>
    public static LoraWeights ImportFile(string path, IReadOnlyList<LoraModuleInfo>? modules = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        PeftConfig config = ReadConfig(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using SafetensorsFile file = SafetensorsFile.Open(path);
        if (file.Tensors.Count == 0)
        {
            throw new AdapterFormatException($"Safetensors file '{path}' holds no tensors: a LoRA adapter needs lora_A and lora_B weights.");
        }

        var byModule = new SortedDictionary<string, Dictionary<string, SafetensorsEntry>>(StringComparer.Ordinal);
        foreach (SafetensorsEntry e in file.Tensors)
        {
            Match m = Regex.Match(e.Name, @"^base_model\.model\.(?<module>.+)\.(?<kind>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(\.weight)?)$");
            if (!m.Success)
            {
                throw new AdapterFormatException($"Key '{e.Name}' in '{path}' is not a PEFT LoRA key ('base_model.model.<module>.lora_A.weight' / 'lora_B.weight' / 'lora_magnitude_vector').");
            }

            string module = m.Groups["module"].Value;
            if (!byModule.TryGetValue(module, out var kinds))
            {
                byModule[module] = kinds = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
            }

            string kind = m.Groups["kind"].Value;
            kinds[kind.StartsWith("lora_magnitude", StringComparison.Ordinal) ? "m" : kind.StartsWith("lora_embedding_", StringComparison.Ordinal) ? "lora_" + kind[^1] + "e" : kind[..6]] = e;
        }

        PeftTargetModules.EnsureSelected(config, byModule.Keys, Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, ConfigFile), path);
        var result = new List<LoraModuleWeights>();
        foreach ((string module, Dictionary<string, SafetensorsEntry> kinds) in byModule)
        {
            LoraModuleInfo? info = null;
            if (modules is not null)
            {
                info = modules.FirstOrDefault(i => i.Module == module)
                    ?? throw new AdapterMismatchException($"Key '{KeyPrefix}{module}.lora_A.weight' in '{path}' matches no module of the model (adapted modules: {string.Join(", ", modules.Take(5).Select(i => i.Module))}{(modules.Count > 5 ? ", ..." : string.Empty)}).");
            }

            bool embedding = kinds.ContainsKey("lora_Ae") || kinds.ContainsKey("lora_Be");
            if (embedding)
            {
                // Embedding: lora_embedding_A [r, rows] and lora_embedding_B [dim, r] have Linear's layout under other keys.
                kinds["lora_A"] = kinds.GetValueOrDefault("lora_Ae")!;
                kinds["lora_B"] = kinds.GetValueOrDefault("lora_Be")!;
            }

            if (!kinds.TryGetValue("lora_A", out SafetensorsEntry? a) || !kinds.TryGetValue("lora_B", out SafetensorsEntry? b) || a is null || b is null)
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}' needs both lora_A.weight and lora_B.weight.");
            }

            IReadOnlyList<long>? kernel = PeftTensorForm.ConvKernel(a.Dims, b.Dims);
            if ((kernel is null && (a.Dims.Count != 2 || b.Dims.Count != 2)) || a.Dims[0] != b.Dims[1])
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}': lora_A is [{string.Join(",", a.Dims)}] and lora_B [{string.Join(",", b.Dims)}]; expected [r, in] and [out, r].");
            }

            if (a.Dims.Concat(b.Dims).Any(d => d is <= 0 or > int.MaxValue))
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}': lora_A is [{string.Join(",", a.Dims)}] and lora_B [{string.Join(",", b.Dims)}]; every dimension must be between 1 and {int.MaxValue}.");
            }

            foreach (SafetensorsEntry tensor in kinds.Values)
            {
                LoraTensorTypes.Require(tensor.DataType, tensor.Name, path);
            }

            if (config.UseDora != kinds.ContainsKey("m"))
            {
                // PEFT would build DoRA layers without their magnitudes (a load error), or drop magnitudes that use_dora
                // false does not use: either way what a merge computes is not what PEFT computes.
                throw new AdapterFormatException(config.UseDora
                    ? $"Module '{module}' in '{path}' has no lora_magnitude_vector, but adapter_config.json says use_dora: true (DoRA needs one per module)."
                    : $"Module '{module}' in '{path}' has a lora_magnitude_vector, but adapter_config.json says use_dora: false (PEFT would ignore it).");
            }

            if (kinds.TryGetValue("m", out SafetensorsEntry? mag) && (mag.Dims.Count != 1 || mag.Dims[0] != b.Dims[0]))
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}': lora_magnitude_vector is [{string.Join(",", mag.Dims)}]; expected [{b.Dims[0]}] (out features).");
            }

            int rank = (int)a.Dims[0], inF = (int)a.Dims.Skip(1).Aggregate(1L, (p, d) => p * d), outF = (int)b.Dims[0];
            if (rank != config.RankOf(module))
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}' has rank {rank}; the config (r / rank_pattern) says {config.RankOf(module)}.");
            }

            if (info is not null && (info.InFeatures != inF || info.OutFeatures != outF))
            {
                throw new AdapterMismatchException($"Module '{module}' in '{path}' is [{inF}→{outF}]; the model's layer is [{info.InFeatures}→{info.OutFeatures}].");
            }

            float[]? magnitude = kinds.TryGetValue("m", out SafetensorsEntry? me) ? file.ToFloat32(me.Name) : null;
            result.Add(new LoraModuleWeights(module, inF, outF, rank, Transpose(file.ToFloat32(a.Name), rank, inF), Transpose(file.ToFloat32(b.Name), outF, rank), (float)config.ScaleOf(module, rank), magnitude)
            {
                Kernel = kernel,
                Embedding = embedding,
            });
        }

        return new LoraWeights(result);
    }

    private static float[] Transpose(float[] m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (int i = 0; i < rows; i++)
        {
            for (int j = 0; j < cols; j++)
            {
                t[(j * rows) + i] = m[(i * cols) + j];
            }
        }

        return t;
    }
}
