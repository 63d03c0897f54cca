using System.Text.RegularExpressions;
using Onnx.Lora.Rewriter.Targets;

namespace Onnx.Lora.Rewriter;

/// <summary>One selected layer with the rank and alpha it gets.</summary>
/// <param name="Target">The layer.</param>
/// <param name="Rank">Rank (after rank_pattern).</param>
/// <param name="Alpha">Alpha (after alpha_pattern).</param>
public sealed record SelectedTarget(LinearTarget Target, int Rank, double Alpha);

/// <summary>
/// Chooses the layers to adapt with PEFT's semantics: a target name matches a module when it equals the module
/// name or is a suffix after a dot; a regex must match the whole name; all-linear takes every linear layer except
/// the output head; exclusions and layers_to_transform filter the result; rank/alpha patterns override per module.
/// </summary>
public static class TargetSelector
{
    /// <summary>True when <paramref name="key"/> (a target or exclude entry) names <paramref name="module"/>: exact or <c>.suffix</c>.</summary>
    public static bool NameMatches(string key, string module)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(module);
        return module == key || module.EndsWith("." + key, StringComparison.Ordinal);
    }

    /// <summary>Selects from <paramref name="candidates"/> (as <see cref="TargetDiscovery.Find"/> returns them).</summary>
    /// <exception cref="LoraOptionsException">
    /// The model has no linear layer, a target name or pattern matches nothing, or the selection is empty; the message
    /// lists the module names that exist.
    /// </exception>
    public static IReadOnlyList<SelectedTarget> Select(IReadOnlyList<LinearTarget> candidates, LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (candidates.Count == 0)
        {
            throw new LoraOptionsException($"The model has no linear layer LoRA can adapt (looked for {TargetDiscovery.SupportedOps} with a constant 2-D weight).");
        }

        IEnumerable<LinearTarget> chosen;
        if (options.TargetRegex is { } regex)
        {
            var re = new Regex($"^(?:{regex})$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
            // NOTE: Conv and Embedding layers are chosen by explicit name only (as all-linear skips them): a regex written
            // for projections must not silently adapt the embedding table too.
            chosen = candidates.Where(t => t.IsLinear && re.IsMatch(t.Module));
            if (!chosen.Any())
            {
                throw NothingMatches($"Target regex '{regex}'", candidates);
            }
        }
        else
        {
            bool allLinear = options.Targets.Any(t => string.Equals(t, LoraOptions.AllLinear, StringComparison.OrdinalIgnoreCase));
            string[] names = options.Targets.Where(t => !string.Equals(t, LoraOptions.AllLinear, StringComparison.OrdinalIgnoreCase)).ToArray();
            foreach (string name in names)
            {
                if (!candidates.Any(t => NameMatches(name, t.Module)))
                {
                    throw NothingMatches($"Target '{name}'", candidates);
                }
            }

            chosen = candidates.Where(t => (allLinear && t.IsLinear && !t.IsOutputHead) || names.Any(n => NameMatches(n, t.Module)));
        }

        chosen = chosen.Where(t => !options.Exclude.Any(e => NameMatches(e, t.Module)));
        if (options.Layers is { } layers)
        {
            // PEFT: with layers_to_transform, a module without a layer index is not adapted.
            chosen = chosen.Where(t => t.LayerIndex is { } i && layers.Contains(i));
        }

        var result = chosen.Select(t => new SelectedTarget(
            t,
            (int)(options.RankPattern.FirstOrDefault(p => p.Matches(t.Module))?.Value ?? options.Rank),
            options.AlphaPattern.FirstOrDefault(p => p.Matches(t.Module))?.Value ?? options.Alpha)).ToList();

        if (result.Count == 0)
        {
            throw NothingMatches("The selection (targets, exclusions and layers together)", candidates);
        }

        foreach (PatternOverride p in options.RankPattern.Concat(options.AlphaPattern))
        {
            if (!result.Any(s => p.Matches(s.Target.Module)))
            {
                throw NothingMatches($"Pattern '{p.Pattern}={p.Value}'", result.Select(s => s.Target).ToList());
            }
        }

        return result;
    }

    private static LoraOptionsException NothingMatches(string what, IReadOnlyList<LinearTarget> candidates)
    {
        const int Shown = 40;
        string list = string.Join(", ", candidates.Take(Shown).Select(t => t.Module));
        string more = candidates.Count > Shown ? $", ... ({candidates.Count - Shown} more)" : string.Empty;
        string suffixes = string.Join(", ", candidates.Select(t => t.Module[(t.Module.LastIndexOf('.') + 1)..]).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal));
        return new LoraOptionsException($"{what} matches no linear layer. Target names: {suffixes}. Modules: {list}{more}.");
    }
}
