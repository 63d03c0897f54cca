namespace Onnx.Lora.Formats.Peft;

/// <summary>
/// PEFT's <c>target_modules</c> selection (tuners_utils <c>check_target_module_exists</c>): a string is a regex that
/// must match the whole module name ("all-linear" selects every linear layer); a list selects a module equal to an
/// entry or ending with "." + entry. PEFT only puts LoRA on selected modules and drops the weights of any other
/// module with a warning, so an adapter whose config does not select its own modules is inconsistent: merging its
/// weights would give a model PEFT never computes.
/// </summary>
internal static class PeftTargetModules
{
    private const string AllLinear = "all-linear";

    /// <summary>Whether <paramref name="config"/> selects <paramref name="module"/>; null when the config does not say (no target_modules).</summary>
    public static bool? Selects(PeftConfig config, string module, string configPath)
    {
        if (config.TargetModulesPattern is { } pattern)
        {
            return pattern == AllLinear || FullMatch(pattern, module, configPath);
        }

        if (!config.TargetModulesGiven)
        {
            return null;
        }

        return config.TargetModules.Any(t => LoraConfig.NameMatches(t, module));
    }

    /// <summary>Refuses an adapter with a module that its own config does not select (or a config that selects nothing).</summary>
    /// <exception cref="AdapterFormatException">A module of the weights file is not selected; the message names both files.</exception>
    public static void EnsureSelected(PeftConfig config, IReadOnlyCollection<string> modules, string configPath, string weightsPath)
    {
        string? first = null;
        int unselected = 0;
        foreach (string module in modules)
        {
            if (Selects(config, module, configPath) == false)
            {
                first ??= module;
                unselected++;
            }
        }

        if (first is null)
        {
            return;
        }

        string targets = config.TargetModulesPattern is { } p ? $"'{p}'" : $"[{string.Join(", ", config.TargetModules.Select(t => $"\"{t}\""))}]";
        string scope = unselected == modules.Count ? $"none of the {modules.Count} modules" : $"{unselected} of the {modules.Count} modules";
        throw new AdapterFormatException($"PEFT config '{configPath}': target_modules {targets} selects {scope} of '{weightsPath}' (e.g. '{first}'); PEFT would not apply those weights.");
    }

    // PEFT's full-match rule is LoraConfig's; only the message gains the config file.
    private static bool FullMatch(string pattern, string module, string configPath)
    {
        try
        {
            return LoraConfig.FullMatch(pattern, module);
        }
        catch (LoraOptionsException e)
        {
            throw new AdapterFormatException($"PEFT config '{configPath}': target_modules: {e.Message}", e);
        }
    }
}
