using System.Diagnostics;

namespace Onnx.Lora.Tests.Support;

/// <summary>The real <c>onnx-lora</c> command as a child process, for tests that SIGKILL it at chosen moments.</summary>
internal static class CliProcess
{
    /// <summary>Starts <c>dotnet onnx-lora.dll ARGS</c>; its output is drained and dropped.</summary>
    public static Process Start(IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment = null)
    {
        string cli = Path.Combine(AppContext.BaseDirectory, "onnx-lora.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }

        start.ArgumentList.Add(cli);
        foreach (string a in arguments)
        {
            start.ArgumentList.Add(a);
        }

        Process process = Process.Start(start)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Runs to the end; the exit code.</summary>
    public static int Run(IEnumerable<string> arguments)
    {
        using Process process = Start(arguments);
        process.WaitForExit();
        return process.ExitCode;
    }

    /// <summary>Runs to the end; the exit code and what it wrote to stderr.</summary>
    public static (int ExitCode, string Error) RunCapturingErrors(IEnumerable<string> arguments, IReadOnlyDictionary<string, string> environment)
    {
        string cli = Path.Combine(AppContext.BaseDirectory, "onnx-lora.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach ((string name, string value) in environment)
        {
            start.Environment[name] = value;
        }

        start.ArgumentList.Add(cli);
        foreach (string a in arguments)
        {
            start.ArgumentList.Add(a);
        }

        using Process process = Process.Start(start)!;
        process.OutputDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, error);
    }

    /// <summary>SIGKILL (no handler, no finally block runs) unless it already ended; whether it was killed.</summary>
    public static bool Kill(Process process)
    {
        if (process.HasExited)
        {
            return false;
        }

        process.Kill(entireProcessTree: true);
        process.WaitForExit();
        return true;
    }

    /// <summary>
    /// Starts ARGS and SIGKILLs it at the <paramref name="eventNumber"/>-th file created in <paramref name="folder"/>
    /// (a writer's temporary appearing), or when it ends; whether it was killed.
    /// </summary>
    public static bool KillAtFileEvent(IEnumerable<string> arguments, string folder, int eventNumber, Func<string, bool>? filter = null)
    {
        Directory.CreateDirectory(folder);
        using var watcher = new FileSystemWatcher(folder) { IncludeSubdirectories = true, NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName };
        using var hit = new ManualResetEventSlim();
        int seen = 0;
        watcher.Created += (_, e) =>
        {
            if ((filter is null || filter(e.FullPath)) && Interlocked.Increment(ref seen) == eventNumber)
            {
                hit.Set();
            }
        };
        watcher.EnableRaisingEvents = true;
        using Process process = Start(arguments);
        var clock = Stopwatch.StartNew();
        while (!hit.IsSet && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60))
        {
            hit.Wait(TimeSpan.FromMilliseconds(20));
        }

        return Kill(process);
    }

    /// <summary>Starts ARGS and SIGKILLs it after <paramref name="delay"/>, or when it ends; whether it was killed.</summary>
    public static bool KillAfter(IEnumerable<string> arguments, TimeSpan delay)
    {
        using Process process = Start(arguments);
        process.WaitForExit(delay);
        return Kill(process);
    }
}
