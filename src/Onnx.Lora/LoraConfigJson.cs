using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Onnx.Lora;

/// <summary>
/// <see cref="LoraConfig"/> in PEFT's adapter_config.json field names, both ways: the manifest stores it so, and the
/// PEFT exporter and importer read and write it so. Values are the user's (r, lora_alpha, use_rslora as given), never
/// a derived alpha.
/// </summary>
public static class LoraConfigJson
{
    /// <summary>PEFT's fields for <paramref name="config"/>; <paramref name="adaptedModules"/> expands all-linear into leaf names as PEFT saves it.</summary>
    public static JsonObject ToPeft(LoraConfig config, IEnumerable<string>? adaptedModules = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        JsonNode? targets = config.TargetRegex is { } regex ? JsonValue.Create(regex)
            : config.IsAllLinear && adaptedModules is not null
                ? Strings(config.Targets.Where(t => !string.Equals(t, LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase))
                    .Concat(adaptedModules.Select(m => m[(m.LastIndexOf('.') + 1)..])).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal))
                : config.IsAllLinear && config.Targets.Count == 1 ? JsonValue.Create(LoraConfig.AllLinear) : Strings(config.Targets);
        return new JsonObject
        {
            ["alpha_pattern"] = Patterns(config.AlphaPattern, v => JsonValue.Create(v)),
            ["base_model_name_or_path"] = config.BaseModelNameOrPath,
            ["exclude_modules"] = config.ExcludeRegex is { } ex ? JsonValue.Create(ex) : config.Exclude.Count > 0 ? Strings(config.Exclude) : null,
            ["init_lora_weights"] = config.InitName is string s ? JsonValue.Create(s) : JsonValue.Create(true),
            ["layers_pattern"] = config.LayersPattern switch { null or { Count: 0 } => null, { Count: 1 } one => JsonValue.Create(one[0]), var many => Strings(many) },
            ["layers_to_transform"] = config.Layers is { } layers ? new JsonArray(layers.Order().Select(l => (JsonNode?)JsonValue.Create(l)).ToArray()) : null,
            ["lora_alpha"] = config.Alpha,
            ["lora_dropout"] = config.Dropout,
            ["r"] = config.Rank,
            ["rank_pattern"] = Patterns(config.RankPattern, v => JsonValue.Create((int)v)),
            ["target_modules"] = targets,
            ["use_dora"] = config.UseDora,
            ["use_rslora"] = config.UseRsLora,
        };
    }

    /// <summary>Reads PEFT's fields from <paramref name="root"/> (absent fields take PEFT's defaults).</summary>
    /// <exception cref="LoraOptionsException">A field has the wrong JSON type or an invalid value; the message names it.</exception>
    public static LoraConfig FromPeft(JsonObject root)
    {
        ArgumentNullException.ThrowIfNull(root);
        JsonNode? targets = root["target_modules"];
        JsonNode? exclude = root["exclude_modules"];
        JsonNode? layersPattern = root["layers_pattern"];
        string? targetString = targets is JsonValue tv && tv.TryGetValue(out string? ts) ? ts : null;
        var config = new LoraConfig
        {
            Rank = Field<int>(root, "r") ?? 8,
            Alpha = Field<double>(root, "lora_alpha") ?? 8,
            Dropout = Field<double>(root, "lora_dropout") ?? 0,
            UseRsLora = Field<bool>(root, "use_rslora") ?? false,
            UseDora = Field<bool>(root, "use_dora") ?? false,
            Init = root["init_lora_weights"] switch
            {
                null => LoraInit.KaimingUniform,
                JsonValue v when v.TryGetValue(out bool _) => LoraInit.KaimingUniform,
                JsonValue v when v.TryGetValue(out string? name) => ParseInitName(name),
                JsonNode other => throw Wrong("init_lora_weights", other, "true or a method name"),
            },
            Targets = targetString is not null ? (string.Equals(targetString, LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase) ? [LoraConfig.AllLinear] : [])
                : targets is null ? [] : StringList(targets, "target_modules"),
            TargetRegex = targetString is not null && !string.Equals(targetString, LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase) ? targetString : null,
            ExcludeRegex = exclude is JsonValue ev && ev.TryGetValue(out string? es) ? es : null,
            Exclude = exclude is null or JsonValue ? [] : StringList(exclude, "exclude_modules"),
            Layers = root["layers_to_transform"] switch
            {
                null => null,
                JsonValue v when v.TryGetValue(out int one) => new SortedSet<int> { one },
                JsonArray a => new SortedSet<int>(a.Select((n, i) => n is JsonValue v && v.TryGetValue(out int l) ? l : throw Wrong($"layers_to_transform[{i}]", n, "an integer"))),
                JsonNode other => throw Wrong("layers_to_transform", other, "an integer or a list of integers"),
            },
            LayersPattern = layersPattern switch
            {
                null => null,
                JsonValue v when v.TryGetValue(out string? p) => p.Length == 0 ? null : [p],
                _ => StringList(layersPattern, "layers_pattern"),
            },
            RankPattern = PatternMap(root, "rank_pattern", integer: true),
            AlphaPattern = PatternMap(root, "alpha_pattern", integer: false),
            BaseModelNameOrPath = root["base_model_name_or_path"] is JsonValue b && b.TryGetValue(out string? baseModel) ? baseModel : null,
        };
        return config;
    }

    // PEFT accepts more init methods than we implement; for an imported adapter the name does not change the numbers.
    private static LoraInit ParseInitName(string name)
    {
        try
        {
            return LoraConfig.ParseInit(name);
        }
        catch (LoraOptionsException)
        {
            return LoraInit.KaimingUniform;
        }
    }

    private static JsonArray Strings(IEnumerable<string> items) => new(items.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray());

    private static JsonObject Patterns(IReadOnlyList<PatternOverride> patterns, Func<double, JsonNode> value) =>
        new(patterns.Select(p => KeyValuePair.Create(p.Pattern, (JsonNode?)value(p.Value))));

    private static T? Field<T>(JsonObject root, string name) where T : struct
    {
        JsonNode? node = root[name];
        return node is null ? null : node is JsonValue v && v.TryGetValue(out T value) ? value : throw Wrong(name, node, $"a {typeof(T).Name.ToLowerInvariant()}");
    }

    private static string[] StringList(JsonNode node, string name) => node is JsonArray arr
        ? arr.Select((n, i) => n is JsonValue v && v.TryGetValue(out string? t) ? t : throw Wrong($"{name}[{i}]", n, "a string")).ToArray()
        : throw Wrong(name, node, "a string or a list of strings");

    private static PatternOverride[] PatternMap(JsonObject root, string name, bool integer)
    {
        if (root[name] is null)
        {
            return [];
        }

        if (root[name] is not JsonObject map)
        {
            throw new LoraOptionsException($"'{name}' must be an object of module pattern → value.");
        }

        return map.Select(p => new PatternOverride(p.Key, p.Value is JsonValue v && (integer ? v.TryGetValue(out int i) ? (double?)i : null : v.TryGetValue(out double d) ? d : null) is double value
            ? value
            : throw Wrong($"{name}['{p.Key}']", p.Value, integer ? "an integer" : "a number"))).ToArray();
    }

    private static LoraOptionsException Wrong(string name, JsonNode? node, string expected)
    {
        string json = node?.ToJsonString() ?? "null";
        return new LoraOptionsException($"'{name}' is {(json.Length <= 80 ? json : json[..77] + "...")}; expected {expected}.");
    }
}

/// <summary>Stores a <see cref="LoraConfig"/> in the manifest as PEFT's adapter_config.json fields.</summary>
public sealed class LoraConfigJsonConverter : JsonConverter<LoraConfig>
{
    /// <inheritdoc />
    public override LoraConfig? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        JsonNode? node = JsonNode.Parse(ref reader);
        try
        {
            return node is JsonObject o ? LoraConfigJson.FromPeft(o) : throw new JsonException("The LoRA config is not a JSON object.");
        }
        catch (LoraOptionsException e)
        {
            throw new JsonException(e.Message, e);
        }
    }

    /// <inheritdoc />
    public override void Write(Utf8JsonWriter writer, LoraConfig value, JsonSerializerOptions options)
    {
        ArgumentNullException.ThrowIfNull(writer);
        LoraConfigJson.ToPeft(value).WriteTo(writer, options);
    }
}
