using Onnx.Lora.Cli;

namespace Onnx.Lora.Tests.Cli;

/// <summary>Runs the onnx-lora root command in-process with captured output.</summary>
internal static class CliRunner
{
    public static (int ExitCode, string Out, string Err) Run(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        int code = CliApp.RunAsync(args, output, error).GetAwaiter().GetResult();
        return (code, output.ToString(), error.ToString());
    }
}
