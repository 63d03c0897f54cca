using System.Diagnostics;
using System.Globalization;

namespace Onnx.Lora.Bench;

/// <summary>
/// Runs this benchmark executable again as a child, so that a measurement's peak RSS counts only that child's work,
/// and reads back the space-separated numbers the child prints.
/// </summary>
internal static class ChildProcess
{
    public static double[] Numbers(params string[] arguments)
    {
        var info = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true };
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet")
        {
            // Started as `dotnet onnx-lora-bench.dll`: the child needs the assembly path too.
            info.ArgumentList.Add(typeof(ChildProcess).Assembly.Location);
        }

        foreach (string argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        using Process process = Process.Start(info)!;
        string output = process.StandardOutput.ReadToEnd().Trim();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"child '{string.Join(' ', arguments)}' failed with exit code {process.ExitCode}: {output}");
        }

        return output.Split(' ').Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray();
    }
}
