namespace Onnx.Lora.Formats;

/// <summary>Matches an adapter's module names to a model's module names.</summary>
public static class ModuleMatcher
{
    /// <summary>
    /// Renames each adapter module to the base's module name: exact, or after GenAI's <c>attn</c> ↔ <c>self_attn</c>
    /// naming difference. A module that matches nothing is an error listing the closest names.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A module matches no name of <paramref name="modules"/>.</exception>
    public static LoraWeights Match(LoraWeights weights, IReadOnlyList<string> modules, string baseSource, string adapterSource)
    {
        var known = new HashSet<string>(modules, StringComparer.Ordinal);
        var result = new List<LoraModuleWeights>();
        foreach (LoraModuleWeights m in weights.Modules)
        {
            string? name = new[] { m.Module, m.Module.Replace(".attn.", ".self_attn.", StringComparison.Ordinal), m.Module.Replace(".self_attn.", ".attn.", StringComparison.Ordinal) }
                .FirstOrDefault(known.Contains);
            if (name is null)
            {
                string close = string.Join(", ", modules.OrderBy(k => EditDistance.Levenshtein(k, m.Module)).ThenBy(k => k, StringComparer.Ordinal).Take(3).Select(k => "'" + k + "'"));
                throw new AdapterMismatchException($"Adapter '{adapterSource}' module '{m.Module}' matches no linear layer of '{baseSource}' ({modules.Count} layers; closest: {(close.Length == 0 ? "none" : close)}).");
            }

            result.Add(m with { Module = name });
        }

        return new LoraWeights(result);
    }
}
