// LoraConfig — PEFT's LoraConfig, the one place its rules live (inject, train, export and import all call these):
//
//   scaling(r, α)        = α / r,  or α / √r with use_rslora                      (PEFT LoraLayer.update_layer)
//   rank/alpha of module = first pattern key k (in order) with re.match(rf"(.*\.)?({k})$", module), else r / lora_alpha
//                                                                                  (PEFT utils.other.get_pattern_key)
//   module selected      = not excluded (exclude_modules: regex string → fullmatch; list → exact or ".suffix")
//                          and (target_modules regex string → fullmatch
//                               | list: exact name → yes (no layer filter)
//                               | list: ".suffix" match → and, with layers_to_transform, its layer index is listed,
//                                 the index read by re.match(r".*\.[^.]*\.(\d+)\.") or, with layers_pattern p,
//                                 re.match(rf".*\.{p}\.(\d+)\."))            (PEFT tuners_utils.check_target_module_exists)
//   all-linear           = every linear layer but the output head                 (PEFT _maybe_include_all_linear_layers)
// NOTE: PEFT refuses layers_to_transform with a regex target_modules and layers_pattern without layers_to_transform;
// Validate refuses them too, so what we adapt is always what PEFT adapts from the same config.
using System.Globalization;
using System.Text.RegularExpressions;

namespace Onnx.Lora;

/// <summary>
/// PEFT's LoraConfig: rank, alpha, rsLoRA, DoRA, init, target selection, exclusions, layers and rank/alpha patterns.
/// Immutable; <see cref="Validate"/> checks it; <see cref="Selects"/>, <see cref="RankOf"/>, <see cref="AlphaOf"/> and
/// <see cref="Scaling(int, double, bool)"/> are PEFT's rules, shared by inject, train, export and import.
/// </summary>
public record LoraConfig
{
    /// <summary>The target list value that selects every linear layer but the output head.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>Time one user-supplied regex may take on one module name (configs come from the internet).</summary>
    internal static readonly TimeSpan RegexTimeout = TimeSpan.FromMilliseconds(200);

    /// <summary>Rank r (PEFT default 8).</summary>
    public int Rank { get; init; } = 8;

    /// <summary>lora_alpha (PEFT default 8).</summary>
    public double Alpha { get; init; } = 8;

    /// <summary>lora_dropout on the branch input; only present in training graphs.</summary>
    public double Dropout { get; init; }

    /// <summary>use_rslora: scale alpha/√r instead of alpha/r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>use_dora: weight-decomposed LoRA (magnitude vector, detached weight norm).</summary>
    public bool UseDora { get; init; }

    /// <summary>init_lora_weights: initialization of A (and B for PiSSA).</summary>
    public LoraInit Init { get; init; } = LoraInit.KaimingUniform;

    /// <summary>target_modules as a list: names matched exactly or as a <c>.suffix</c> of the dotted path, or <see cref="AllLinear"/>. Empty: use <see cref="TargetRegex"/>.</summary>
    public IReadOnlyList<string> Targets { get; init; } = [AllLinear];

    /// <summary>target_modules as a string: a regex the whole module name must match; overrides <see cref="Targets"/>.</summary>
    public string? TargetRegex { get; init; }

    /// <summary>exclude_modules as a list: modules never adapted (exact or <c>.suffix</c>).</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>exclude_modules as a string: a regex; a module whose whole name matches is never adapted.</summary>
    public string? ExcludeRegex { get; init; }

    /// <summary>layers_to_transform: decoder layer indices to adapt; null for all. Needs a list <see cref="Targets"/>.</summary>
    public IReadOnlySet<int>? Layers { get; init; }

    /// <summary>layers_pattern: the name(s) of the layer list (e.g. <c>layers</c>, <c>h</c>) the index follows; null: any.</summary>
    public IReadOnlyList<string>? LayersPattern { get; init; }

    /// <summary>rank_pattern: per-module rank overrides, first matching key wins (insertion order, as PEFT).</summary>
    public IReadOnlyList<PatternOverride> RankPattern { get; init; } = [];

    /// <summary>alpha_pattern: per-module alpha overrides.</summary>
    public IReadOnlyList<PatternOverride> AlphaPattern { get; init; } = [];

    /// <summary>
    /// base_model_name_or_path: the base model the adapter applies to (a Hugging Face id or folder for AutoPeftModel,
    /// else the path of the model that was adapted); null when unknown.
    /// </summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>True when <see cref="Targets"/> holds <see cref="AllLinear"/> (and no regex overrides it).</summary>
    public bool IsAllLinear => TargetRegex is null && Targets.Any(t => string.Equals(t, AllLinear, StringComparison.OrdinalIgnoreCase));

    /// <summary>The one scaling formula: <paramref name="alpha"/>/r, or <paramref name="alpha"/>/√r with rsLoRA; 0 for r = 0 (an empty slot).</summary>
    public static double Scaling(int rank, double alpha, bool useRsLora) =>
        rank == 0 ? 0 : useRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;

    /// <summary>The scale of <paramref name="rank"/> and <paramref name="alpha"/> under this config's rsLoRA setting.</summary>
    public double ScalingFor(int rank, double alpha) => Scaling(rank, alpha, UseRsLora);

    /// <summary>The scale PEFT applies to <paramref name="module"/>: <see cref="Scaling(int, double, bool)"/> of its pattern rank and alpha.</summary>
    public double ScalingOf(string module) => Scaling(RankOf(module), AlphaOf(module), UseRsLora);

    /// <summary>The rank of <paramref name="module"/>: the first matching rank_pattern key, else <see cref="Rank"/>.</summary>
    /// <exception cref="LoraOptionsException">A pattern is not a valid regex or runs too long.</exception>
    public int RankOf(string module) => PatternKey(RankPattern, module) is { } p ? (int)p.Value : Rank;

    /// <summary>The alpha of <paramref name="module"/>: the first matching alpha_pattern key, else <see cref="Alpha"/>.</summary>
    /// <exception cref="LoraOptionsException">A pattern is not a valid regex or runs too long.</exception>
    public double AlphaOf(string module) => PatternKey(AlphaPattern, module) is { } p ? p.Value : Alpha;

    /// <summary>PEFT's get_pattern_key: the first override whose key matches <c>(.*\.)?(key)$</c> from the start of <paramref name="module"/>.</summary>
    /// <exception cref="LoraOptionsException">A key is not a valid regex or runs too long.</exception>
    public static PatternOverride? PatternKey(IEnumerable<PatternOverride> patterns, string module)
    {
        ArgumentNullException.ThrowIfNull(patterns);
        ArgumentNullException.ThrowIfNull(module);
        return patterns.FirstOrDefault(p => p.Matches(module));
    }

    /// <summary>
    /// PEFT's check_target_module_exists (+ all-linear): true when this config adapts <paramref name="module"/>.
    /// <paramref name="isOutputHead"/> only matters for all-linear, which never takes the output head.
    /// </summary>
    /// <exception cref="LoraOptionsException">A regex is not valid or runs too long.</exception>
    public bool Selects(string module, bool isOutputHead = false)
    {
        ArgumentNullException.ThrowIfNull(module);
        if (ExcludeRegex is { } excludeRegex ? FullMatch(excludeRegex, module) : Exclude.Any(e => NameMatches(e, module)))
        {
            return false;
        }

        if (TargetRegex is { } regex)
        {
            return FullMatch(regex, module);
        }

        if (Targets.Contains(module, StringComparer.Ordinal))
        {
            return true; // PEFT: a module named in full is taken without the layer filter.
        }

        bool found = (IsAllLinear && !isOutputHead) || Targets.Any(t => module.EndsWith("." + t, StringComparison.Ordinal));
        if (!found || Layers is null || Layers.Count == 0)
        {
            return found;
        }

        return LayerIndexOf(module, LayersPattern) is { } index && Layers.Contains(index);
    }

    /// <summary>
    /// The layer index PEFT reads from <paramref name="module"/> for layers_to_transform: the last <c>.NAME.N.</c> of the
    /// path, NAME restricted to <paramref name="layersPattern"/> when given (first pattern that matches); null when none.
    /// </summary>
    public static int? LayerIndexOf(string module, IReadOnlyList<string>? layersPattern)
    {
        ArgumentNullException.ThrowIfNull(module);
        IEnumerable<string> patterns = layersPattern is { Count: > 0 } ? layersPattern.Select(p => $@"^.*\.{p}\.(\d+)\.") : [@"^.*\.[^.]*\.(\d+)\."];
        foreach (string pattern in patterns)
        {
            Match m = Run(pattern, module, static (re, name) => Regex.Match(name, re, RegexOptions.CultureInvariant, RegexTimeout));
            if (m.Success)
            {
                return int.TryParse(m.Groups[1].ValueSpan, NumberStyles.None, CultureInfo.InvariantCulture, out int index) ? index : null;
            }
        }

        return null;
    }

    /// <summary>True when <paramref name="key"/> (a list entry of target_modules or exclude_modules) names <paramref name="module"/>: exact or <c>.suffix</c>.</summary>
    public static bool NameMatches(string key, string module)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(module);
        return module == key || module.EndsWith("." + key, StringComparison.Ordinal);
    }

    /// <summary>PEFT's name of <see cref="Init"/> in init_lora_weights: true, "gaussian" or "pissa".</summary>
    public object InitName => Init switch
    {
        LoraInit.Gaussian => "gaussian",
        LoraInit.Pissa => "pissa",
        _ => true,
    };

    /// <summary>Parses an init name: ours (KaimingUniform, Gaussian, Pissa) or PEFT's init_lora_weights (true, gaussian, pissa, pissa_niter_N).</summary>
    /// <exception cref="LoraOptionsException">The name is neither.</exception>
    public static LoraInit ParseInit(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string t = text.Trim().ToLowerInvariant();
        return t switch
        {
            "true" or "kaiming" or "kaiminguniform" or "kaiming_uniform" or "default" => LoraInit.KaimingUniform,
            "gaussian" => LoraInit.Gaussian,
            _ when t == "pissa" || t.StartsWith("pissa_niter_", StringComparison.Ordinal) => LoraInit.Pissa,
            _ => throw new LoraOptionsException($"Init '{text}' is not one of true (kaiming uniform), gaussian, pissa."),
        };
    }

    /// <summary>Checks every option; the one place a LoRA configuration is validated.</summary>
    /// <exception cref="LoraOptionsException">An option is out of range or inconsistent, or a regex does not compile.</exception>
    public virtual void Validate()
    {
        if (Rank <= 0)
        {
            throw new LoraOptionsException($"Rank must be > 0; got {Rank}.");
        }

        if (!double.IsFinite(Alpha) || Alpha <= 0)
        {
            throw new LoraOptionsException($"Alpha must be a finite number > 0; got {Alpha}.");
        }

        if (!(Dropout >= 0 && Dropout < 1))
        {
            throw new LoraOptionsException($"Dropout must be in [0, 1); got {Dropout}.");
        }

        if (TargetRegex is null && Targets.Count == 0)
        {
            throw new LoraOptionsException("No target modules given: pass target names, a regex, or 'all-linear'.");
        }

        if (TargetRegex is not null && Layers is not null)
        {
            throw new LoraOptionsException($"Layers cannot be combined with a target regex (PEFT refuses layers_to_transform when target_modules is a string); put the layers into the regex, e.g. '.*\\.layers\\.(0|1|2)\\..*'.");
        }

        if (LayersPattern is { Count: > 0 } && Layers is null)
        {
            throw new LoraOptionsException("A layers pattern needs layers (PEFT: layers_pattern only applies with layers_to_transform).");
        }

        foreach (string regex in new[] { TargetRegex, ExcludeRegex }.OfType<string>().Concat(RankPattern.Select(p => p.Pattern)).Concat(AlphaPattern.Select(p => p.Pattern)).Concat(LayersPattern ?? []))
        {
            try
            {
                _ = new Regex(regex, RegexOptions.CultureInvariant);
            }
            catch (ArgumentException e)
            {
                throw new LoraOptionsException($"'{regex}' is not a valid regular expression: {e.Message}", e);
            }
        }

        foreach (PatternOverride p in RankPattern)
        {
            if (p.Value <= 0 || p.Value != Math.Floor(p.Value) || p.Value > int.MaxValue)
            {
                throw new LoraOptionsException($"Rank pattern '{p.Pattern}' sets rank {p.Value}; a rank must be a whole number > 0.");
            }
        }

        foreach (PatternOverride p in AlphaPattern.Where(p => !double.IsFinite(p.Value) || p.Value <= 0))
        {
            throw new LoraOptionsException($"Alpha pattern '{p.Pattern}' sets alpha {p.Value}; alpha must be > 0.");
        }

        if (Layers is not null && Layers.Any(l => l < 0))
        {
            throw new LoraOptionsException($"Layer indices must be ≥ 0; got {string.Join(",", Layers)}.");
        }
    }

    /// <summary>Parses PEFT's layers_to_transform as text: <c>0-3,7</c>.</summary>
    /// <exception cref="LoraOptionsException">The text is not a list of indices and ranges.</exception>
    public static IReadOnlySet<int> ParseLayers(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var layers = new SortedSet<int>();
        foreach (string part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] ends = part.Split('-');
            if (ends.Length is 1 or 2 && ends.All(e => int.TryParse(e, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
            {
                int from = int.Parse(ends[0], CultureInfo.InvariantCulture);
                int to = int.Parse(ends[^1], CultureInfo.InvariantCulture);
                if (to >= from)
                {
                    for (int i = from; i <= to; i++)
                    {
                        layers.Add(i);
                    }

                    continue;
                }
            }

            throw new LoraOptionsException($"Layers '{text}': '{part}' is not an index or a range like 0-3.");
        }

        if (layers.Count == 0)
        {
            throw new LoraOptionsException($"Layers '{text}' selects no layer.");
        }

        return layers;
    }

    /// <summary>A plain <see cref="LoraConfig"/> with the LoRA fields of <paramref name="config"/> (for derived types).</summary>
    private protected static LoraConfig CopyOf(LoraConfig config) => new(config);

    /// <summary>Python's re.fullmatch: whether <paramref name="regex"/> matches the whole of <paramref name="text"/> (PEFT's target_modules / exclude_modules as a string).</summary>
    /// <param name="regex">The user's pattern.</param>
    /// <param name="text">A module name.</param>
    /// <exception cref="LoraOptionsException">The pattern is not a valid regex or runs too long.</exception>
    public static bool FullMatch(string regex, string text) => Run($"^(?:{regex})$", text, static (re, name) => Regex.IsMatch(name, re, RegexOptions.CultureInvariant, RegexTimeout));

    /// <summary>Runs a user regex with a timeout; failures become <see cref="LoraOptionsException"/> naming the regex.</summary>
    internal static T Run<T>(string regex, string text, Func<string, string, T> apply)
    {
        try
        {
            // The static Regex cache keeps the parsed patterns: selection asks the same few patterns of every module.
            return apply(regex, text);
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new LoraOptionsException($"Regex '{regex}' took over {RegexTimeout.TotalMilliseconds} ms on module '{text}' (a pathological pattern).", e);
        }
        catch (ArgumentException e)
        {
            throw new LoraOptionsException($"'{regex}' is not a valid regular expression: {e.Message}", e);
        }
    }
}
