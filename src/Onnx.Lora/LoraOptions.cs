using System.Globalization;
using System.Text.RegularExpressions;
using Onnx.Lora.Ir;

namespace Onnx.Lora;

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
    /// <exception cref="LoraOptionsException">The pattern is not a valid regex or runs too long.</exception>
    public bool Matches(string module) =>
        LoraConfig.Run($@"^(.*\.)?({Pattern})$", module, static (re, name) => Regex.IsMatch(name, re, RegexOptions.CultureInvariant, LoraConfig.RegexTimeout));

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
/// A <see cref="LoraConfig"/> plus where inject puts it in the graph (placement, training graph, seed, rank dim name).
/// Immutable; <see cref="Validate"/> is the one place that checks it (the pass calls it before touching the model).
/// </summary>
public sealed record LoraOptions : LoraConfig
{
    /// <summary>Creates options with PEFT's defaults.</summary>
    public LoraOptions() { }

    /// <summary>Creates options that inject <paramref name="config"/> (placement and the rest at their defaults).</summary>
    public LoraOptions(LoraConfig config) : base(config ?? throw new ArgumentNullException(nameof(config))) { }

    /// <summary>Seed of the initialization; with the module name it fixes every A bit for bit.</summary>
    public int Seed { get; init; }

    /// <summary>Where A and B live.</summary>
    public LoraPlacement Placement { get; init; } = LoraPlacement.Initializers;

    /// <summary>True for a training graph: the dropout node is added only then.</summary>
    public bool TrainingGraph { get; init; }

    /// <summary>
    /// Suffix of the symbolic rank dimensions of adapter-slot inputs: each module's A and B share the dim
    /// <c>&lt;module&gt;.&lt;RankDimName&gt;</c>, so modules may take adapters of different ranks in one run.
    /// </summary>
    public string RankDimName { get; init; } = "lora_rank";

    /// <summary>The PEFT configuration alone (what adapter_config.json records), without the graph placement.</summary>
    public LoraConfig ToConfig() => CopyOf(this);

    /// <summary>Checks every option; the one place options are validated.</summary>
    /// <exception cref="LoraOptionsException">An option is out of range or inconsistent.</exception>
    public override void Validate()
    {
        base.Validate();
        if (Placement == LoraPlacement.AdapterSlots && (UseDora || Init == LoraInit.Pissa))
        {
            throw new LoraOptionsException("Adapter slots carry plain LoRA A/B only (as ORT .onnx_adapter files do); DoRA and PiSSA need the Initializers placement.");
        }

        if (string.IsNullOrWhiteSpace(RankDimName))
        {
            throw new LoraOptionsException("The symbolic rank dimension needs a name.");
        }
    }
}
