using Onnx.Lora.Targets;

namespace Onnx.Lora;

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
    public static bool NameMatches(string key, string module) => LoraConfig.NameMatches(key, module);

    /// <summary>Selects from <paramref name="candidates"/> (as <see cref="TargetDiscovery.Find"/> returns them).</summary>
    /// <exception cref="LoraOptionsException">
    /// The model has no linear layer, a target name or pattern matches nothing, or the selection is empty; the message
    /// lists the module names that exist.
    /// </exception>
    public static IReadOnlyList<SelectedTarget> Select(IReadOnlyList<LinearTarget> candidates, LoraConfig options)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (candidates.Count == 0)
        {
            throw new LoraOptionsException($"The model has no linear layer LoRA can adapt (looked for {TargetDiscovery.SupportedOps} with a constant 2-D weight).");
        }

        if (options.TargetRegex is { } regex)
        {
            // NOTE: Conv and Embedding layers are chosen by explicit name only (as all-linear skips them): a regex written
            // for projections must not silently adapt the embedding table too.
            if (!candidates.Any(t => t.IsLinear && LoraConfig.FullMatch(regex, t.Module)))
            {
                throw NothingMatches($"Target regex '{regex}'", candidates);
            }
        }
        else
        {
            foreach (string name in options.Targets.Where(t => !string.Equals(t, LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase)))
            {
                if (!candidates.Any(t => NameMatches(name, t.Module)))
                {
                    throw NothingMatches($"Target '{name}'", candidates);
                }
            }
        }

        // PEFT's own rule (exclusions, exact names, suffixes, layers_to_transform/layers_pattern): LoraConfig.Selects.
        // Conv and Embedding layers only when a target names them (not through all-linear or a regex), as PEFT's
        // all-linear takes Linear layers only.
        IEnumerable<LinearTarget> chosen = candidates.Where(t => options.Selects(t.Module, t.IsOutputHead)
            && (t.IsLinear || (options.TargetRegex is null && options.Targets.Any(n => NameMatches(n, t.Module)))));
        var result = chosen.Select(t => new SelectedTarget(
            t,
            options.RankOf(t.Module),
            options.AlphaOf(t.Module))).ToList();

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
