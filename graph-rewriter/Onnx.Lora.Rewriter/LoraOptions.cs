using System.Globalization;
using System.Text.RegularExpressions;
using Onnx.Lora.Graph;

namespace Onnx.Lora.Rewriter;

/// <summary>How A is initialized (B starts at zero unless PiSSA sets both).</summary>
public enum LoraInit
{
    /// <summary>PEFT's default: kaiming_uniform_(a=√5) on torch's A [r, in], i.e. U(−1/√in, 1/√in).</summary>
    KaimingUniform,

    /// <summary>PEFT's "gaussian": A ~ N(0, 1/r).</summary>
    Gaussian,

    /// <summary>PiSSA: A, B from the top-r singular vectors of W and W replaced by the residual (reads W).</summary>
    Pissa,
}

/// <summary>A regex → value override, as PEFT's rank_pattern / alpha_pattern entries.</summary>
/// <param name="Pattern">Regex matched against a suffix of the module path (PEFT: <c>(.*\.)?(pattern)$</c>).</param>
/// <param name="Value">The rank or alpha for matching modules.</param>
public sealed record PatternOverride(string Pattern, double Value)
{
    /// <summary>True when <paramref name="module"/> matches, as PEFT's get_pattern_key matches.</summary>
    public bool Matches(string module) => Regex.IsMatch(module, $@"^(.*\.)?({Pattern})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    /// <summary>Parses <c>REGEX=VALUE</c>.</summary>
    /// <exception cref="LoraOptionsException">The text is not REGEX=VALUE.</exception>
    public static PatternOverride Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int eq = text.LastIndexOf('=');
        if (eq <= 0 || !double.TryParse(text.AsSpan(eq + 1), NumberStyles.Float, CultureInfo.InvariantCulture, out double value))
        {
            throw new LoraOptionsException($"Pattern '{text}' is not REGEX=VALUE (e.g. 'q_proj=16').");
        }

        return new PatternOverride(text[..eq], value);
    }
}

/// <summary>A LoRA option is invalid; the message names the option, the value and what is allowed.</summary>
public class LoraOptionsException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public LoraOptionsException() { }

    /// <summary>Creates the exception with a message.</summary>
    public LoraOptionsException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public LoraOptionsException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>
/// Everything that decides which layers get an adapter and how: PEFT's LoraConfig. Immutable; <see cref="Validate"/>
/// is the one place that checks it (the pass calls it before touching the model).
/// </summary>
public sealed record LoraOptions
{
    /// <summary>The target list value that selects every linear layer but the output head.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>Rank r (PEFT default 8).</summary>
    public int Rank { get; init; } = 8;

    /// <summary>LoRA alpha (PEFT default 8).</summary>
    public double Alpha { get; init; } = 8;

    /// <summary>Dropout on the branch input; only present in training graphs.</summary>
    public double Dropout { get; init; }

    /// <summary>Scale alpha/√r instead of alpha/r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>Weight-decomposed LoRA (magnitude vector, detached weight norm).</summary>
    public bool UseDora { get; init; }

    /// <summary>Initialization of A (and B for PiSSA).</summary>
    public LoraInit Init { get; init; } = LoraInit.KaimingUniform;

    /// <summary>Seed of the initialization; with the module name it fixes every A bit for bit.</summary>
    public int Seed { get; init; }

    /// <summary>Target module names (exact, or suffix on the dotted path), or <see cref="AllLinear"/>. Empty: use <see cref="TargetRegex"/>.</summary>
    public IReadOnlyList<string> Targets { get; init; } = [AllLinear];

    /// <summary>A regex the whole module name must match (PEFT's target_modules as a string); overrides <see cref="Targets"/>.</summary>
    public string? TargetRegex { get; init; }

    /// <summary>Modules never adapted (exact or suffix), as PEFT's exclude_modules.</summary>
    public IReadOnlyList<string> Exclude { get; init; } = [];

    /// <summary>Decoder layer indices to adapt (PEFT's layers_to_transform); null for all.</summary>
    public IReadOnlySet<int>? Layers { get; init; }

    /// <summary>Per-module rank overrides.</summary>
    public IReadOnlyList<PatternOverride> RankPattern { get; init; } = [];

    /// <summary>Per-module alpha overrides.</summary>
    public IReadOnlyList<PatternOverride> AlphaPattern { get; init; } = [];

    /// <summary>Where A and B live.</summary>
    public LoraPlacement Placement { get; init; } = LoraPlacement.Initializers;

    /// <summary>True for a training graph: the dropout node is added only then.</summary>
    public bool TrainingGraph { get; init; }

    /// <summary>
    /// Suffix of the symbolic rank dimensions of adapter-slot inputs: each module's A and B share the dim
    /// <c>&lt;module&gt;.&lt;RankDimName&gt;</c>, so modules may take adapters of different ranks in one run.
    /// </summary>
    public string RankDimName { get; init; } = "lora_rank";

    /// <summary>Checks every option; the one place options are validated.</summary>
    /// <exception cref="LoraOptionsException">An option is out of range or inconsistent.</exception>
    public void Validate()
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

        foreach (string regex in new[] { TargetRegex }.OfType<string>().Concat(RankPattern.Select(p => p.Pattern)).Concat(AlphaPattern.Select(p => p.Pattern)))
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
            if (p.Value <= 0 || p.Value != Math.Floor(p.Value))
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

        if (Placement == LoraPlacement.AdapterSlots && (UseDora || Init == LoraInit.Pissa))
        {
            throw new LoraOptionsException("Adapter slots carry plain LoRA A/B only (as ORT .onnx_adapter files do); DoRA and PiSSA need the Initializers placement.");
        }

        if (string.IsNullOrWhiteSpace(RankDimName))
        {
            throw new LoraOptionsException("The symbolic rank dimension needs a name.");
        }
    }

    /// <summary>The branch scale for <paramref name="rank"/> and <paramref name="alpha"/>: alpha/r, or alpha/√r with rsLoRA.</summary>
    public double ScalingFor(int rank, double alpha) => UseRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;

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
}
