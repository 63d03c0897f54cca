using System.Diagnostics;
using System.Globalization;

namespace Onnx.Lora.Tests.Support;

/// <summary>
/// <c>mpirun -np N dotnet onnx-lora.dll ARGS</c> as a child process (Open MPI). Without <c>mpirun</c> on PATH the
/// calling test FAILS, so CI cannot pass by silently skipping; only <c>ONNX_LORA_SKIP_MPI_TESTS=1</c> skips (locally).
/// </summary>
internal static class MpiJob
{
    public const string SkipVariable = "ONNX_LORA_SKIP_MPI_TESTS";

    /// <summary>The mpirun executable; fails (or, with <see cref="SkipVariable"/>=1, skips) the test when there is none.</summary>
    public static string RequireMpirun()
    {
        string? found = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);
        if (found is not null)
        {
            return found;
        }

        if (Environment.GetEnvironmentVariable(SkipVariable) == "1")
        {
            Assert.Inconclusive($"mpirun not found; skipped because {SkipVariable}=1.");
        }

        Assert.Fail($"mpirun not found on PATH: install Open MPI (apt-get install openmpi-bin libopenmpi-dev; .ci/run does) or set {SkipVariable}=1 to skip the MPI tests locally.");
        return "";
    }

    /// <summary>Starts one program on <paramref name="ranks"/> ranks; output goes to <paramref name="log"/>.</summary>
    public static Process Start(int ranks, IEnumerable<string> arguments, string log, IReadOnlyDictionary<string, string>? environment = null) =>
        StartMpmd([(ranks, arguments)], log, environment);

    /// <summary>Starts several programs in one job (MPMD, <c>A : B</c>): each entry gives its rank count and arguments.</summary>
    public static Process StartMpmd(IReadOnlyList<(int Ranks, IEnumerable<string> Arguments)> programs, string log, IReadOnlyDictionary<string, string>? environment = null)
    {
        string mpirun = RequireMpirun();
        string cli = Path.Combine(AppContext.BaseDirectory, "onnx-lora.dll");
        var start = new ProcessStartInfo(mpirun) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        // Containers often forbid the cross-process memory reads (CMA) of Open MPI's shared-memory transport; copying
        // through the shared segment instead works everywhere.
        start.Environment["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none";
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value; // Local ranks inherit mpirun's environment.
        }
        // Root in CI containers; more ranks than cores on a 2-core box; one thread per rank, no spinning on a shared box.
        foreach (string a in (string[])["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"])
        {
            start.ArgumentList.Add(a);
        }

        for (int i = 0; i < programs.Count; i++)
        {
            if (i > 0)
            {
                start.ArgumentList.Add(":");
            }

            start.ArgumentList.Add("-np");
            start.ArgumentList.Add(programs[i].Ranks.ToString(CultureInfo.InvariantCulture));
            start.ArgumentList.Add("dotnet");
            start.ArgumentList.Add(cli);
            foreach (string a in programs[i].Arguments)
            {
                start.ArgumentList.Add(a);
            }
        }

        var writer = new StreamWriter(log) { AutoFlush = true };
        Process process = Process.Start(start)!;
        process.StandardInput.Close();
        var gate = new object();
        void Write(string? line)
        {
            if (line is not null)
            {
                lock (gate)
                {
                    writer.WriteLine(line);
                }
            }
        }

        process.OutputDataReceived += (_, e) => Write(e.Data);
        process.ErrorDataReceived += (_, e) => Write(e.Data);
        process.Exited += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    /// <summary>Runs to the end (at most <paramref name="timeout"/>); the exit code and the log's text.</summary>
    public static (int ExitCode, string Log) Run(int ranks, IEnumerable<string> arguments, string log, TimeSpan timeout) =>
        Wait(Start(ranks, arguments, log), log, timeout);

    /// <summary>Waits for <paramref name="process"/> (killing it after <paramref name="timeout"/>); exit code and log.</summary>
    public static (int ExitCode, string Log) Wait(Process process, string log, TimeSpan timeout)
    {
        using (process)
        {
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
                Assert.Fail($"mpirun did not end within {timeout}: {ReadShared(log)}");
            }

            process.WaitForExit(); // Drains the redirected output.
            return (process.ExitCode, ReadShared(log));
        }
    }

    /// <summary>The process ids of the ranks under <paramref name="mpirun"/>, by rank (read from their environment).</summary>
    public static Dictionary<int, int> RankProcesses(Process mpirun)
    {
        var ranks = new Dictionary<int, int>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || ParentOf(pid) != mpirun.Id)
            {
                continue;
            }

            try
            {
                string environment = File.ReadAllText(Path.Combine(dir, "environ"));
                foreach (string entry in environment.Split('\0'))
                {
                    if (entry.StartsWith("OMPI_COMM_WORLD_RANK=", StringComparison.Ordinal))
                    {
                        ranks[int.Parse(entry["OMPI_COMM_WORLD_RANK=".Length..], CultureInfo.InvariantCulture)] = pid;
                    }
                }
            }
            catch (IOException)
            {
                // The process ended meanwhile.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return ranks;
    }

    public static string ReadShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    private static int ParentOf(int pid)
    {
        try
        {
            // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ')'.
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return int.Parse(fields[1], CultureInfo.InvariantCulture);
        }
        catch (IOException)
        {
            return -1;
        }
    }
}
