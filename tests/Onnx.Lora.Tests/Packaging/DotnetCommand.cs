using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Onnx.Lora.Tests.Packaging;

/// <summary>Runs <c>dotnet</c> (or a program it installed) as a child process, the way a user's shell would.</summary>
internal static class DotnetCommand
{
    /// <summary>The dotnet installation running these tests (what a user's DOTNET_ROOT points at).</summary>
    public static string DotnetRoot { get; } =
        Environment.GetEnvironmentVariable("DOTNET_ROOT") is { Length: > 0 } root ? root
            : Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));

    /// <summary>Runs <c>dotnet ARGS</c> in <paramref name="workingDirectory"/>; fails the test when it does not end in time.</summary>
    public static (int ExitCode, string Out, string Err) Run(string workingDirectory, TimeSpan timeout, params string[] args) =>
        RunProgram("dotnet", workingDirectory, timeout, args);

    /// <summary>Runs <paramref name="program"/> with <paramref name="args"/>; fails the test when it does not end in time.</summary>
    public static (int ExitCode, string Out, string Err) RunProgram(string program, string workingDirectory, TimeSpan timeout, params string[] args)
    {
        var start = new ProcessStartInfo(program)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        // NOTE: `dotnet test` exports MSBuild's own paths to the test host; a child build must find its SDK afresh.
        foreach (string key in start.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            start.Environment.Remove(key);
        }

        start.Environment["DOTNET_ROOT"] = DotnetRoot;
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"'{program} {string.Join(' ', args)}' did not end within {timeout.TotalSeconds:F0} s.\n{output.Result}\n{error.Result}");
        }

        process.WaitForExit();
        return (process.ExitCode, output.Result, error.Result);
    }
}
