using System.CommandLine;

namespace Onnx.Lora.Cli;

/// <summary>The onnx-lora command line, runnable in-process (tests pass their own writers).</summary>
internal static class CliApp
{
    /// <summary>Builds the root command with every verb.</summary>
    public static RootCommand CreateRoot()
    {
        var root = new RootCommand("onnx-lora: fine-tune ONNX transformer models with LoRA — inject, train, merge, export. No Python.");
        root.Options.Add(GlobalOptions.Verbose);
        foreach (Command command in CommandRegistry.All())
        {
            root.Subcommands.Add(command);
        }

        return root;
    }

    /// <summary>Parses and runs <paramref name="args"/>, writing to <paramref name="output"/> and <paramref name="error"/>; returns the exit code.</summary>
    public static Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (args is ["help", .. var rest])
        {
            // `onnx-lora help` and `onnx-lora help VERB`, as git and dotnet accept them.
            args = [.. rest.Take(1), "--help"];
        }

        ParseResult parse = CreateRoot().Parse(args);
        if (parse.Errors.Count > 0 && !args.Any(a => a is "-h" or "--help" or "-?"))
        {
            // A malformed command line is invalid input too (System.CommandLine's default exit code is 1).
            foreach (System.CommandLine.Parsing.ParseError e in parse.Errors)
            {
                error.WriteLine($"onnx-lora: {e.Message}");
            }

            if (Suggestions.For(parse) is { } hint)
            {
                error.WriteLine($"onnx-lora: {hint}");
            }

            string verb = parse.CommandResult.Command == parse.RootCommandResult.Command ? "" : parse.CommandResult.Command.Name + " ";
            error.WriteLine($"Run 'onnx-lora {verb}--help' for usage.");
            return Task.FromResult(ExitCodes.InvalidInput);
        }

        // Our commands report their own errors (LoraCommand); the default handler would print a stack trace.
        return parse.InvokeAsync(new InvocationConfiguration
        {
            Output = output,
            Error = error,
            EnableDefaultExceptionHandler = false,
            // Ctrl-C cancels the token; `train` then saves a checkpoint, which may take longer than the 2 s default.
            ProcessTerminationTimeout = TimeSpan.FromSeconds(60),
        }, cancellationToken);
    }
}
