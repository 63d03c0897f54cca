using System.CommandLine;

namespace Onnx.Lora.Cli;

/// <summary>"Did you mean" for a mistyped verb or flag: the closest known name within a small edit distance.</summary>
internal static class Suggestions
{
    /// <summary>
    /// A hint line for the tokens the parser did not recognise, or null: a flag is compared with the options of the
    /// command it was given to, a word in verb position with the verbs.
    /// </summary>
    public static string? For(ParseResult parse)
    {
        ArgumentNullException.ThrowIfNull(parse);
        Command command = parse.CommandResult.Command;
        foreach (string token in parse.UnmatchedTokens)
        {
            IEnumerable<string> candidates = token.StartsWith('-')
                ? command.Options.Concat(parse.RootCommandResult.Command.Options.Where(o => o.Recursive)).SelectMany(o => o.Aliases.Prepend(o.Name))
                : command == parse.RootCommandResult.Command ? command.Subcommands.Select(c => c.Name).Append("help") : [];
            string flagless = token.Split('=')[0];
            if (Closest(flagless, candidates) is { } best)
            {
                return $"Did you mean '{best}' instead of '{flagless}'?";
            }
        }

        return null;
    }

    /// <summary>The candidate nearest to <paramref name="typed"/> (Levenshtein), if within a third of its length (at least 2 edits allowed).</summary>
    public static string? Closest(string typed, IEnumerable<string> candidates)
    {
        ArgumentNullException.ThrowIfNull(typed);
        ArgumentNullException.ThrowIfNull(candidates);
        int limit = Math.Max(2, typed.Length / 3);
        return candidates.Distinct(StringComparer.Ordinal)
            .Select(c => (Name: c, Distance: Onnx.Lora.Formats.EditDistance.Levenshtein(typed, c)))
            .Where(c => c.Distance <= limit && c.Distance > 0)
            .OrderBy(c => c.Distance).ThenBy(c => c.Name, StringComparer.Ordinal)
            .Select(c => c.Name)
            .FirstOrDefault();
    }
}
