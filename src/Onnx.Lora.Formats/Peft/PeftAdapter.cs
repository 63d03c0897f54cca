using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Formats.Peft;

/// <summary>An adapter_config.json as read: PEFT's LoRA configuration and the fields beside it.</summary>
public sealed record PeftConfig
{
    /// <summary>The LoRA configuration (r, lora_alpha, use_rslora, targets, layers, exclusions, patterns, base model).</summary>
    public required LoraConfig Lora { get; init; }

    /// <summary>target_modules as written when it is a list (leaf names or full names).</summary>
    public IReadOnlyList<string> TargetModules { get; init; } = [];

    /// <summary>True when target_modules is a list (even an empty one); false when absent or a string.</summary>
    public bool TargetModulesGiven { get; init; }

    /// <summary>target_modules given as one string: a regex matched against the whole module name, or "all-linear".</summary>
    public string? TargetModulesPattern { get; init; }

    /// <summary>task_type.</summary>
    public string TaskType { get; init; } = "CAUSAL_LM";

    /// <summary>Default rank r.</summary>
    public int R => Lora.Rank;

    /// <summary>base_model_name_or_path.</summary>
    public string? BaseModelNameOrPath => Lora.BaseModelNameOrPath;

    /// <summary>The rank of <paramref name="module"/> after rank_pattern (PEFT's get_pattern_key).</summary>
    /// <exception cref="AdapterFormatException">A pattern is not a valid regex or runs too long.</exception>
    public int RankOf(string module) => Guard(() => Lora.RankOf(module));

    /// <summary>The alpha of <paramref name="module"/> after alpha_pattern.</summary>
    /// <exception cref="AdapterFormatException">A pattern is not a valid regex or runs too long.</exception>
    public double AlphaOf(string module) => Guard(() => Lora.AlphaOf(module));

    /// <summary>The scale PEFT applies to B·A for <paramref name="module"/> with rank <paramref name="rank"/>.</summary>
    /// <exception cref="AdapterFormatException">A pattern is not a valid regex or runs too long.</exception>
    public double ScaleOf(string module, int rank) => LoraConfig.Scaling(rank, AlphaOf(module), Lora.UseRsLora);

    /// <summary>True when PEFT would put LoRA on <paramref name="module"/> (a config without target_modules selects everything).</summary>
    /// <exception cref="AdapterFormatException">A regex is not valid or runs too long.</exception>
    public bool Selects(string module) => (Lora.TargetRegex is null && Lora.Targets.Count == 0) || Guard(() => Lora.Selects(module));

    private static T Guard<T>(Func<T> rule)
    {
        try
        {
            return rule();
        }
        catch (LoraOptionsException e)
        {
            throw new AdapterFormatException($"PEFT config: {e.Message}", e);
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

    /// <summary>
    /// Writes <paramref name="weights"/> as a PEFT adapter folder (both files atomically). adapter_config.json records
    /// <paramref name="config"/> as the user gave it (r, lora_alpha, use_rslora, targets, layers_to_transform,
    /// exclude_modules, patterns) when it selects exactly these modules with their ranks; B is written at the scale PEFT
    /// derives from that config. Without a config (or one that does not describe these weights), the config names the
    /// modules in full and sets lora_alpha = r so PEFT's scale is 1, with the weights' own scale folded into B.
    /// </summary>
    /// <param name="weights">The trained numbers (any scale; B is rescaled to the config's).</param>
    /// <param name="folder">Where adapter_model.safetensors and adapter_config.json go.</param>
    /// <param name="config">The LoRA configuration the weights were trained under, or null.</param>
    /// <param name="baseModelNameOrPath">base_model_name_or_path; null keeps the config's.</param>
    /// <exception cref="AdapterFormatException">The weights cannot be written.</exception>
    public static void Export(LoraWeights weights, string folder, LoraConfig? config = null, string? baseModelNameOrPath = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(folder);
        LoraConfig written = ConfigFor(weights, config, baseModelNameOrPath);
        var tensors = new List<SafetensorsTensor>();
        foreach (LoraModuleWeights m in weights.Modules)
        {
            string key = KeyPrefix + m.Module;
            double scale = written.ScalingOf(m.Module);
            float[] b = m.B;
            if ((float)scale != m.Scale)
            {
                // PEFT multiplies B·A by the config's scale; carry the rest of ours in B (DoRA sees only s·B·A).
                b = (float[])m.B.Clone();
                System.Numerics.Tensors.TensorPrimitives.Multiply(b, (float)(m.Scale / scale), b);
            }

            (string aKey, long[] aDims, string bKey, long[] bDims) = PeftTensorForm.Of(m);
            tensors.Add(SafetensorsTensor.FromFloats(key + aKey, aDims, Transpose(m.A, m.InFeatures, m.Rank)));
            tensors.Add(SafetensorsTensor.FromFloats(key + bKey, bDims, Transpose(b, m.Rank, m.OutFeatures)));
            if (m.Magnitude is { } mag)
            {
                tensors.Add(SafetensorsTensor.FromFloats(key + ".lora_magnitude_vector", [m.OutFeatures], mag));
            }
        }

        JsonObject fields = LoraConfigJson.ToPeft(written, weights.Modules.Select(m => m.Module));
        fields["auto_mapping"] = null;
        fields["bias"] = "none";
        fields["fan_in_fan_out"] = false;
        fields["inference_mode"] = true;
        fields["modules_to_save"] = null;
        fields["peft_type"] = "LORA";
        fields["revision"] = null;
        fields["task_type"] = "CAUSAL_LM";
        // PEFT writes its config with sorted keys.
        var json = new JsonObject(fields.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, p.Value?.DeepClone())));

        // The config goes last: it is what marks the folder as an adapter, so a kill mid-export never leaves a
        // config beside weights of another export (AtomicFileBatch removes the old config before any rename).
        using var batch = new AtomicFileBatch();
        string weightsPath = Path.Combine(folder, WeightsFile);
        batch.Add(weightsPath, s => SafetensorsWriter.Write(s, weightsPath, tensors, SafetensorsWriter.PtMetadata));
        batch.Add(Path.Combine(folder, ConfigFile), s => s.Write(System.Text.Encoding.UTF8.GetBytes(json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }))));
        batch.Commit();
    }

    /// <summary>
    /// The configuration to write for <paramref name="weights"/>: <paramref name="config"/> when PEFT, reading it, adapts
    /// every module of the weights with its rank; else one naming the modules in full with scale 1.
    /// </summary>
    internal static LoraConfig ConfigFor(LoraWeights weights, LoraConfig? config, string? baseModelNameOrPath)
    {
        bool useDora = weights.Modules.Any(m => m.Magnitude is not null);
        if (config is not null && weights.Modules.All(m => config.Selects(m.Module) && config.RankOf(m.Module) == m.Rank))
        {
            return config with { UseDora = useDora, BaseModelNameOrPath = baseModelNameOrPath ?? config.BaseModelNameOrPath };
        }

        int rank = weights.Modules.Count == 0 ? 8 : weights.Modules.GroupBy(m => m.Rank).MaxBy(g => g.Count())!.Key;
        var odd = weights.Modules.Where(m => m.Rank != rank).ToList();
        return new LoraConfig
        {
            Rank = rank,
            Alpha = rank,
            Dropout = config?.Dropout ?? 0,
            UseDora = useDora,
            Targets = weights.Modules.Count == 0 ? [LoraConfig.AllLinear] : weights.Modules.Select(m => m.Module).ToArray(),
            RankPattern = odd.Select(m => new PatternOverride(LoraManifest.EscapeRegex(m.Module), m.Rank)).ToArray(),
            AlphaPattern = odd.Select(m => new PatternOverride(LoraManifest.EscapeRegex(m.Module), m.Rank)).ToArray(),
            BaseModelNameOrPath = baseModelNameOrPath ?? config?.BaseModelNameOrPath,
        };
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

            LoraConfig lora;
            try
            {
                lora = LoraConfigJson.FromPeft((JsonObject)root);
            }
            catch (LoraOptionsException e)
            {
                throw new AdapterFormatException($"PEFT config '{path}': {e.Message}", e);
            }

            if (root["r"] is null || root["lora_alpha"] is null)
            {
                throw new AdapterFormatException($"PEFT config '{path}' has no '{(root["r"] is null ? "r" : "lora_alpha")}'.");
            }

            var config = new PeftConfig
            {
                Lora = lora,
                TargetModules = root["target_modules"] is JsonArray arr ? arr.Select((n, i) => n is JsonValue v && v.TryGetValue(out string? t) ? t : throw new AdapterFormatException($"PEFT config '{path}': target_modules[{i}] is not a string.")).ToList() : [],
                TargetModulesGiven = root["target_modules"] is JsonArray,
                TargetModulesPattern = root["target_modules"] is JsonValue tm && tm.TryGetValue(out string? pattern) ? pattern : null,
                TaskType = root["task_type"] is JsonValue tt && tt.TryGetValue(out string? task) ? task : "CAUSAL_LM",
            };
            if (lora.Rank <= 0 || lora.RankPattern.Any(p => p.Value <= 0))
            {
                throw new AdapterFormatException($"PEFT config '{path}': 'r' and every rank_pattern value must be positive (r = {lora.Rank}).");
            }

            if (!double.IsFinite(lora.Alpha) || lora.AlphaPattern.Any(p => !double.IsFinite(p.Value)))
            {
                throw new AdapterFormatException($"PEFT config '{path}': 'lora_alpha' and every alpha_pattern value must be finite numbers.");
            }

            foreach (string regex in lora.RankPattern.Concat(lora.AlphaPattern).Select(p => p.Pattern).Concat(new[] { lora.TargetRegex, lora.ExcludeRegex }.OfType<string>()))
            {
                try
                {
                    _ = new Regex(regex, RegexOptions.CultureInvariant);
                }
                catch (ArgumentException e)
                {
                    throw new AdapterFormatException($"PEFT config '{path}': '{regex}' is not a valid regex: {e.Message}", e);
                }
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

            if (config.Lora.UseDora != kinds.ContainsKey("m"))
            {
                // PEFT would build DoRA layers without their magnitudes (a load error), or drop magnitudes that use_dora
                // false does not use: either way what a merge computes is not what PEFT computes.
                throw new AdapterFormatException(config.Lora.UseDora
                    ? $"Module '{module}' in '{path}' has no lora_magnitude_vector, but adapter_config.json says use_dora: true (DoRA needs one per module)."
                    : $"Module '{module}' in '{path}' has a lora_magnitude_vector, but adapter_config.json says use_dora: false (PEFT would ignore it).");
            }

            if (kinds.TryGetValue("m", out SafetensorsEntry? mag) && (mag.Dims.Count != 1 || mag.Dims[0] != b.Dims[0]))
            {
                throw new AdapterFormatException($"Module '{module}' in '{path}': lora_magnitude_vector is [{string.Join(",", mag.Dims)}]; expected [{b.Dims[0]}] (out features).");
            }

            if (!config.Selects(module))
            {
                // PEFT puts no LoRA layer on a module its config does not select and drops its weights on load.
                throw new AdapterFormatException($"Module '{module}' in '{path}' is not selected by its adapter_config.json (target_modules, exclude_modules, layers_to_transform); PEFT would ignore its weights.");
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
