using System.CommandLine;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Cli.Commands;

/// <summary>An argument or option naming a file (or, when <paramref name="FolderAllowed"/>, a folder) the verb reads, with how messages call it ("Model", "Adapter").</summary>
internal sealed record InputPath(Symbol Symbol, string What, bool FolderAllowed);

/// <summary>
/// A file named on the command line that does not exist is the command line's fault (exit 2, docs/exit-codes.md),
/// whatever kind of file it was meant to be: checked for every verb before any work, so the code does not depend on
/// which reader happens to open it first.
/// </summary>
internal static class InputPaths
{
    /// <summary>Refuses the first given path of <paramref name="inputs"/> that is neither a file nor a folder.</summary>
    /// <exception cref="InputNotFoundException">A path does not exist.</exception>
    public static void EnsureExist(ParseResult parse, IEnumerable<InputPath> inputs)
    {
        foreach (InputPath input in inputs)
        {
            if (parse.GetResult(input.Symbol) is not { } result)
            {
                continue;
            }

            foreach (System.CommandLine.Parsing.Token token in result.Tokens)
            {
                EnsureExists(token.Value, input.What, input.FolderAllowed);
            }
        }
    }

    /// <summary>Refuses <paramref name="path"/> (when given) if it does not exist, or is a folder where a file is expected.</summary>
    /// <exception cref="InputNotFoundException">The path does not exist, or is a folder.</exception>
    public static void EnsureExists(string? path, string what, bool folderAllowed = true)
    {
        if (string.IsNullOrEmpty(path) || File.Exists(path))
        {
            return;
        }

        // NOTE: a dangling symbolic link does not exist either (File.Exists follows links).
        if (!Directory.Exists(path))
        {
            throw new InputNotFoundException($"{what} '{path}' does not exist.");
        }

        if (!folderAllowed)
        {
            throw new InputNotFoundException($"{what} '{path}' is a folder; expected a file.");
        }
    }
}
