using System.CommandLine;

namespace Onnx.Lora.Cli;

/// <summary>Options every verb accepts (declared once on the root command, recursive).</summary>
internal static class GlobalOptions
{
    /// <summary><c>--verbose</c>: on an error, also print the exception with its stack trace (for bug reports).</summary>
    public static readonly Option<bool> Verbose = new("--verbose")
    {
        Description = "On an error, also print the full exception and stack trace (for bug reports).",
        Recursive = true,
    };
}
