using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Trainer.Schedules;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Config;

/// <summary>
/// Builds <see cref="TrainOptions"/> from an optional JSON or YAML file and command-line overrides (flags win).
/// Keys are snake_case (<c>learning_rate</c>); kebab-case (<c>learning-rate</c>) is accepted too, and nested maps
/// flatten with '_' (<c>lora: {rank: 8}</c> is <c>lora_rank</c>). Unknown keys are errors, so a typo never
/// silently trains with a default.
/// </summary>
public static class TrainOptionsLoader
{
    private delegate TrainOptions Setter(TrainOptions options, ConfigValue value);

    private static readonly Dictionary<string, Setter> s_setters = new(StringComparer.Ordinal)
    {
        ["model"] = (o, v) => o with { Model = v.String() },
        ["data"] = (o, v) => o with { Data = v.String() },
        ["eval_data"] = (o, v) => o with { EvalData = v.NullableString() },
        ["tokenizer"] = (o, v) => o with { Tokenizer = v.String() },
        ["output_dir"] = (o, v) => o with { OutputDir = v.String() },
        ["resume"] = (o, v) => o with { Resume = v.NullableString() },
        ["seq_length"] = (o, v) => o with { SeqLength = v.Int() },
        ["batch_size"] = (o, v) => o with { BatchSize = v.Int() },
        ["gradient_accumulation_steps"] = (o, v) => o with { GradientAccumulationSteps = v.Int() },
        ["epochs"] = (o, v) => o with { Epochs = v.Double() },
        ["max_steps"] = (o, v) => o with { MaxSteps = v.IsNull ? null : v.Int() },
        ["learning_rate"] = (o, v) => o with { LearningRate = v.Double() },
        ["lora_plus_ratio"] = (o, v) => o with { LoraPlusRatio = v.Double() },
        ["weight_decay"] = (o, v) => o with { WeightDecay = v.Double() },
        ["adam_beta1"] = (o, v) => o with { AdamBeta1 = v.Double() },
        ["adam_beta2"] = (o, v) => o with { AdamBeta2 = v.Double() },
        ["adam_epsilon"] = (o, v) => o with { AdamEpsilon = v.Double() },
        ["lr_scheduler"] = (o, v) => o with { Schedule = v.Enum<ScheduleKind>() },
        ["warmup_steps"] = (o, v) => o with { WarmupSteps = v.Int() },
        ["warmup_ratio"] = (o, v) => o with { WarmupRatio = v.Double() },
        ["max_grad_norm"] = (o, v) => o with { MaxGradNorm = v.Double() },
        ["seed"] = (o, v) => o with { Seed = v.Int() },
        ["eval_steps"] = (o, v) => o with { EvalSteps = v.Int() },
        ["early_stopping_patience"] = (o, v) => o with { EarlyStoppingPatience = v.Int() },
        ["save_steps"] = (o, v) => o with { SaveSteps = v.Int() },
        ["save_total_limit"] = (o, v) => o with { SaveTotalLimit = v.Int() },
        ["execution_provider"] = (o, v) => o with { ExecutionProvider = v.String().ToLowerInvariant() },
        ["device_id"] = (o, v) => o with { DeviceId = v.Int() },
        ["cuda_tf32"] = (o, v) => o with { CudaTf32 = v.Bool() },
        ["tensorrt_cache"] = (o, v) => o with { TensorRtCache = v.String() },
        ["intra_op_threads"] = (o, v) => o with { IntraOpThreads = v.Int() },
        ["packing"] = (o, v) => o with { Packing = v.Bool() },
        ["completion_only_loss"] = (o, v) => o with { CompletionOnlyLoss = v.Bool() },
        ["truncate"] = (o, v) => o with { Truncate = v.Bool() },
        ["nan_policy"] = (o, v) => o with { NanPolicy = v.Enum<NonFinitePolicy>() },
        ["lora_rank"] = (o, v) => o with { LoraRank = v.Int() },
        ["lora_alpha"] = (o, v) => o with { LoraAlpha = v.Double() },
        ["lora_targets"] = (o, v) => o with { LoraTargets = v.List() },
        ["lora_dropout"] = (o, v) => o with { LoraDropout = v.Double() },
        ["use_rslora"] = (o, v) => o with { UseRsLora = v.Bool() },
        ["use_dora"] = (o, v) => o with { UseDora = v.Bool() },
        ["memory_limit"] = (o, v) => o with { MemoryLimit = v.NullableString() },
        ["lora_target_regex"] = (o, v) => o with { LoraTargetRegex = v.NullableString() },
        ["lora_exclude"] = (o, v) => o with { LoraExclude = v.IsNull ? [] : v.List() },
        ["lora_layers"] = (o, v) => o with { LoraLayers = v.IsNull ? null : string.Join(",", v.List()) },
        ["lora_rank_pattern"] = (o, v) => o with { LoraRankPattern = v.IsNull ? [] : v.List() },
        ["lora_alpha_pattern"] = (o, v) => o with { LoraAlphaPattern = v.IsNull ? [] : v.List() },
        ["lora_init"] = (o, v) => o with { LoraInit = v.Enum<Onnx.Lora.LoraInit>() },
    };

    /// <summary>Every key a file or flag may set, snake_case.</summary>
    public static IReadOnlyCollection<string> Keys => s_setters.Keys;

    /// <summary>
    /// Loads options: defaults, then <paramref name="configFile"/> (JSON if it ends in .json, else YAML) when given,
    /// then <paramref name="overrides"/> in order. The result is validated.
    /// </summary>
    /// <param name="configFile">A JSON or YAML file, or null.</param>
    /// <param name="overrides">Key/value pairs from the command line (lists comma-separated).</param>
    /// <exception cref="ConfigException">The file is unreadable, a key is unknown, a value has the wrong type, or validation fails; the message names the file (or "command line") and the key.</exception>
    public static TrainOptions Load(string? configFile, IEnumerable<KeyValuePair<string, string>>? overrides = null)
    {
        var options = new TrainOptions();
        if (configFile is not null)
        {
            string text;
            try
            {
                text = InputFile.ReadAllText(configFile, "Config file", 16 << 20, m => new ConfigException(m));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new ConfigException($"Cannot read config file '{configFile}': {e.Message}", e);
            }

            bool json = configFile.EndsWith(".json", StringComparison.OrdinalIgnoreCase);
            IEnumerable<(string Key, ConfigValue Value)> entries = json ? ReadJson(configFile, text) : ReadYaml(configFile, text);
            options = Apply(options, entries, configFile);
        }

        if (overrides is not null)
        {
            options = Apply(options, overrides.Select(kv => (kv.Key, ConfigValue.FromFlag(kv.Value, "command line", kv.Key))), "command line");
        }

        options.Validate(configFile is null ? "command line" : $"{configFile} + command line");
        return options;
    }

    private static TrainOptions Apply(TrainOptions options, IEnumerable<(string Key, ConfigValue Value)> entries, string source)
    {
        foreach ((string rawKey, ConfigValue value) in entries)
        {
            string key = rawKey.Replace('-', '_').ToLowerInvariant();
            if (!s_setters.TryGetValue(key, out Setter? setter))
            {
                string? near = s_setters.Keys.FirstOrDefault(k => k.Contains(key, StringComparison.Ordinal) || key.Contains(k, StringComparison.Ordinal));
                throw new ConfigException($"{value.Where}: unknown key '{rawKey}'" + (near is null ? "." : $"; did you mean '{near}'?"));
            }

            options = setter(options, value);
        }

        _ = source;
        return options;
    }

    private static List<(string, ConfigValue)> ReadJson(string file, string text)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(text, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{file}:{(e.LineNumber ?? 0) + 1}: invalid JSON: {e.Message}", e);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ConfigException($"{file}: expected a JSON object of options at the top level, found {doc.RootElement.ValueKind}.");
            }

            var result = new List<(string, ConfigValue)>();
            FlattenJson(file, "", doc.RootElement, result);
            return result;
        }
    }

    private static void FlattenJson(string file, string prefix, JsonElement obj, List<(string, ConfigValue)> result)
    {
        foreach (JsonProperty p in obj.EnumerateObject())
        {
            string key = prefix + p.Name;
            string where = $"{file}: key '{key}'";
            switch (p.Value.ValueKind)
            {
                case JsonValueKind.Object:
                    FlattenJson(file, key + "_", p.Value, result);
                    break;
                case JsonValueKind.Array:
                    result.Add((key, ConfigValue.FromList(p.Value.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : e.GetRawText()).ToList(), where)));
                    break;
                case JsonValueKind.Null:
                    result.Add((key, ConfigValue.FromScalar(null, where)));
                    break;
                case JsonValueKind.String:
                    result.Add((key, ConfigValue.FromScalar(p.Value.GetString(), where)));
                    break;
                default:
                    result.Add((key, ConfigValue.FromScalar(p.Value.GetRawText(), where)));
                    break;
            }
        }
    }

    private static List<(string, ConfigValue)> ReadYaml(string file, string text)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            throw new ConfigException($"{file}:{e.Start.Line}: invalid YAML: {e.Message}", e);
        }

        var result = new List<(string, ConfigValue)>();
        if (stream.Documents.Count == 0)
        {
            return result;
        }

        if (stream.Documents[0].RootNode is not YamlMappingNode root)
        {
            throw new ConfigException($"{file}: expected a mapping of options at the top level.");
        }

        FlattenYaml(file, "", root, result);
        return result;
    }

    private static void FlattenYaml(string file, string prefix, YamlMappingNode map, List<(string, ConfigValue)> result)
    {
        foreach ((YamlNode k, YamlNode v) in map.Children)
        {
            string key = prefix + ((k as YamlScalarNode)?.Value ?? k.ToString());
            string where = $"{file}:{k.Start.Line}: key '{key}'";
            switch (v)
            {
                case YamlMappingNode m:
                    FlattenYaml(file, key + "_", m, result);
                    break;
                case YamlSequenceNode s:
                    result.Add((key, ConfigValue.FromList(s.Children.Select(c => (c as YamlScalarNode)?.Value
                        ?? throw new ConfigException($"{where}: list items must be plain values")).ToList(), where)));
                    break;
                case YamlScalarNode scalar:
                    bool isNull = scalar.Style == YamlDotNet.Core.ScalarStyle.Plain && scalar.Value is null or "" or "~" or "null";
                    result.Add((key, ConfigValue.FromScalar(isNull ? null : scalar.Value, where)));
                    break;
                default:
                    throw new ConfigException($"{where}: unsupported YAML node.");
            }
        }
    }

    /// <summary>A raw value with the place it came from, converted on demand so errors name that place.</summary>
    private sealed class ConfigValue
    {
        private readonly string? _scalar;
        private readonly IReadOnlyList<string>? _list;

        private ConfigValue(string? scalar, IReadOnlyList<string>? list, string where)
        {
            _scalar = scalar;
            _list = list;
            Where = where;
        }

        public string Where { get; }

        public bool IsNull => _scalar is null && _list is null;

        public static ConfigValue FromScalar(string? value, string where) => new(value, null, where);

        public static ConfigValue FromList(IReadOnlyList<string> value, string where) => new(null, value, where);

        public static ConfigValue FromFlag(string value, string source, string key) => new(value, null, $"{source}: --{key.Replace('_', '-')}");

        public string String() => _scalar ?? throw Error("a text value", _list is null ? "nothing" : "a list");

        public string? NullableString() => _list is null ? _scalar : throw Error("a text value", "a list");

        public int Int() => int.TryParse(String(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : throw Error("an integer", $"'{_scalar}'");

        public double Double() => double.TryParse(String(), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : throw Error("a number", $"'{_scalar}'");

        public bool Bool() => String().ToLowerInvariant() switch
        {
            "true" or "yes" or "on" or "1" => true,
            "false" or "no" or "off" or "0" => false,
            _ => throw Error("true or false", $"'{_scalar}'"),
        };

        public T Enum<T>()
            where T : struct, Enum =>
            System.Enum.TryParse(String(), ignoreCase: true, out T v) && System.Enum.IsDefined(v) && !char.IsDigit(_scalar![0])
                ? v
                : throw Error("one of " + string.Join(", ", System.Enum.GetNames<T>().Select(n => n.ToLowerInvariant())), $"'{_scalar}'");

        public IReadOnlyList<string> List() => _list ?? String().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

        private ConfigException Error(string expected, string found) => new($"{Where}: expected {expected}, found {found}.");
    }
}
