using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Tools;

namespace Onnx.Lora.Bench;

/// <summary>
/// Crash-safety campaign for <c>onnx-lora train</c>: one uninterrupted reference run of the embedded stories260K model,
/// then N trials that each SIGKILL the training process one to three times at seeded random moments, restarting it
/// with <c>--resume latest</c> after every kill, and finally let it finish. A trial passes when the final
/// metrics.jsonl (wall-clock fields aside) and the final adapter_model.safetensors equal the reference byte for byte.
/// </summary>
/// <remarks>
/// Kills come in two kinds: at a random time after the process starts (uniform over the reference run's wall time,
/// so they land in start-up, conversion, graph building, training, checkpointing or the final export alike), and at
/// the n-th file created inside a checkpoint being written (a hidden <c>.checkpoint-*</c> folder; about six per save),
/// which aims at the few milliseconds a save takes.
/// </remarks>
internal static class KillResumeCampaign
{
    private const int MaxKillsPerTrial = 3;

    public static int Run(string[] args)
    {
        var o = new ToolArgs(args);
        string dir = Path.GetFullPath(o.Maybe("dir") ?? Path.Combine("out", "bench", "kill-resume"));
        int trials = o.Int("trials", 10);
        int seed = o.Int("seed", 20240611);
        int steps = o.Int("steps", 300);
        int saveSteps = o.Int("save-steps", 5);
        string cli = o.Maybe("cli") ?? FindCli();
        // kill (SIGKILL, default) | int | term | mixed (SIGINT or SIGTERM per kill): a catchable signal must end the run
        // with exit 130 and a checkpoint of its last completed step.
        string signal = o.Maybe("signal") ?? "kill";
        string repo = RepositoryRoot.Find();
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }

        Directory.CreateDirectory(dir);
        string data = Path.Combine(dir, "train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 16).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds in the big tree. They sang all day." })));
        string model = Path.Combine(repo, "models", "default", "stories260K");
        string[] flags = ["--model", Path.Combine(model, "stories260K.bin"), "--tokenizer", Path.Combine(model, "tok512.model"), "--data", data,
            "--seq-length", "32", "--batch-size", "4", "--max-steps", $"{steps}", "--learning-rate", "2e-3", "--lora-targets", "all-linear",
            "--save-steps", $"{saveSteps}", "--save-total-limit", "2", "--intra-op-threads", "1", "--seed", "3"];

        string reference = Path.Combine(dir, "reference");
        var clock = Stopwatch.StartNew();
        int exit = RunToEnd(cli, flags, reference, resume: false);
        double referenceSeconds = clock.Elapsed.TotalSeconds;
        if (exit != 0)
        {
            Console.Error.WriteLine($"the reference run failed with exit code {exit}");
            return 1;
        }

        string[] expectedMetrics = Metrics(reference);
        byte[] expectedAdapter = Adapter(reference);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"kill-and-resume campaign: stories260K, all-linear LoRA, {steps} steps, checkpoint every {saveSteps} steps (keep 2); reference run {referenceSeconds:F2} s wall; seed {seed}; {trials} trials"));
        Console.WriteLine("trial  kill (moment → last metrics step, resumed from, torn checkpoint left)                                   final resume from   result");
        int passed = 0, signalFailures = 0;
        for (int t = 1; t <= trials; t++)
        {
            var rng = new Random(seed + t);
            string run = Path.Combine(dir, $"trial-{t:D2}");
            int kills = 1 + rng.Next(MaxKillsPerTrial);
            var notes = new List<string>();
            bool finished = false;
            for (int k = 0; k < kills && !finished; k++)
            {
                string from = Latest(run) ?? "start";
                int remainingSaves = Math.Max(1, (steps - (from == "start" ? 0 : int.Parse(from["checkpoint-".Length..], CultureInfo.InvariantCulture))) / saveSteps);
                bool duringCheckpoint = signal == "kill" && rng.Next(3) == 0;
                string send = signal switch { "int" => "INT", "term" => "TERM", "mixed" => rng.Next(2) == 0 ? "INT" : "TERM", _ => "KILL" };
                KillResult r = send != "KILL"
                    ? Signal(cli, flags, run, resume: k > 0, send, TimeSpan.FromSeconds(0.5 + (rng.NextDouble() * (referenceSeconds - 0.5))))
                    : duringCheckpoint
                    ? KillAtCheckpointEvent(cli, flags, run, resume: k > 0, eventNumber: 1 + rng.Next(5 * remainingSaves))
                    : KillAfter(cli, flags, run, resume: k > 0, TimeSpan.FromSeconds(rng.NextDouble() * referenceSeconds));
                finished = r.ExitedFirst;
                if (r.Failure is not null)
                {
                    signalFailures++;
                }

                string torn = TornCheckpoint(run) ?? "-";
                notes.Add(r.ExitedFirst ? $"{r.Moment} → exited before the kill"
                    : $"{r.Moment} → step {LastStep(run)}, from {from}, torn {torn}{r.Failure}");
            }

            string finalFrom = Latest(run) ?? "start";
            exit = RunToEnd(cli, flags, run, resume: true);
            string result;
            if (exit != 0)
            {
                result = $"FAIL (exit {exit})";
            }
            else if (notes.Any(n => n.Contains("FAIL", StringComparison.Ordinal)))
            {
                result = "FAIL (signal)";
            }
            else if (!Metrics(run).SequenceEqual(expectedMetrics))
            {
                result = "FAIL (metrics differ)";
            }
            else if (!Adapter(run).AsSpan().SequenceEqual(expectedAdapter))
            {
                result = "FAIL (adapter differs)";
            }
            else
            {
                result = "pass";
                passed++;
            }

            for (int i = 0; i < notes.Count; i++)
            {
                string first = i == 0 ? $"{t,5}" : "     ";
                string tail = i == notes.Count - 1 ? $"{finalFrom,-19} {result}" : string.Empty;
                Console.WriteLine($"{first}  {notes[i],-100} {tail}");
            }
        }

        Console.WriteLine($"{passed}/{trials} trials passed (final losses, learning rates, gradient norms, token counts and adapter bytes equal the uninterrupted run)"
            + (signal == "kill" ? string.Empty : $"; {signalFailures} signalled run(s) did not exit 130 with a checkpoint of their last step"));
        return passed == trials ? 0 : 1;
    }

    private sealed record KillResult(string Moment, bool ExitedFirst, string? Failure = null);

    // SIGINT / SIGTERM: the run must stop by itself with exit 130, its latest checkpoint being its last metrics step.
    private static KillResult Signal(string cli, string[] flags, string run, bool resume, string signal, TimeSpan delay)
    {
        using Process process = Start(cli, flags, run, resume);
        string moment = string.Create(CultureInfo.InvariantCulture, $"SIG{signal} t={delay.TotalSeconds:F3}s");
        if (process.WaitForExit(delay))
        {
            return new KillResult(moment, true);
        }

        var clock = Stopwatch.StartNew();
        using (Process kill = Process.Start("sh", ["-c", $"kill -{signal} {process.Id.ToString(CultureInfo.InvariantCulture)}"])!)
        {
            kill.WaitForExit();
        }

        if (!process.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return new KillResult(moment, false, " FAIL: still running 120 s after the signal");
        }

        string stopped = string.Create(CultureInfo.InvariantCulture, $" (exit {process.ExitCode} after {clock.Elapsed.TotalMilliseconds:F0} ms)");
        string last = LastStep(run);
        string? latest = Latest(run);
        // A signal that lands after the last step (during the final export) lets the run finish: exit 0, complete output.
        bool finishedFirst = process.ExitCode == 0 && File.Exists(Path.Combine(run, "summary.json"));
        string? failure = finishedFirst ? null
            : process.ExitCode != 130 ? $" FAIL: exit {process.ExitCode}"
            : last != "none" && last != "0" && latest != $"checkpoint-{last}" ? $" FAIL: latest checkpoint {latest ?? "none"}, last step {last}"
            : null;
        return new KillResult(moment + stopped, finishedFirst, failure);
    }

    private static KillResult KillAfter(string cli, string[] flags, string run, bool resume, TimeSpan delay)
    {
        using Process process = Start(cli, flags, run, resume);
        bool exited = process.WaitForExit(delay);
        if (!exited)
        {
            process.Kill(entireProcessTree: true); // SIGKILL: no handler, no finally block runs.
            process.WaitForExit();
        }

        return new KillResult(string.Create(CultureInfo.InvariantCulture, $"t={delay.TotalSeconds:F3}s"), exited);
    }

    private static KillResult KillAtCheckpointEvent(string cli, string[] flags, string run, bool resume, int eventNumber)
    {
        // The watcher must exist before the process writes; checkpoints/ is created by the first save, so watch the run.
        Directory.CreateDirectory(run);
        using var watcher = new FileSystemWatcher(run) { IncludeSubdirectories = true, NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName };
        int seen = 0;
        using var hit = new ManualResetEventSlim();
        watcher.Created += (_, e) =>
        {
            if (e.FullPath.Contains($"{Path.DirectorySeparatorChar}.checkpoint-", StringComparison.Ordinal) && Interlocked.Increment(ref seen) == eventNumber)
            {
                hit.Set();
            }
        };
        watcher.EnableRaisingEvents = true;
        using Process process = Start(cli, flags, run, resume);
        while (!hit.IsSet && !process.HasExited)
        {
            hit.Wait(TimeSpan.FromMilliseconds(50));
        }

        bool exited = process.HasExited;
        if (!exited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }

        return new KillResult($"checkpoint event #{eventNumber}", exited);
    }

    private static int RunToEnd(string cli, string[] flags, string run, bool resume)
    {
        using Process process = Start(cli, flags, run, resume);
        process.WaitForExit();
        return process.ExitCode;
    }

    private static Process Start(string cli, string[] flags, string run, bool resume)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])[cli, "train", .. flags, "--output-dir", run, .. resume ? (string[])["--resume", "latest"] : []])
        {
            info.ArgumentList.Add(a);
        }

        Process process = Process.Start(info)!;
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static string? Latest(string run)
    {
        string checkpoints = Path.Combine(run, "checkpoints");
        return Directory.Exists(checkpoints)
            ? Directory.EnumerateDirectories(checkpoints, "checkpoint-*").Where(d => File.Exists(Path.Combine(d, "trainer_state.json")))
                .Select(Path.GetFileName).MaxBy(n => int.Parse(n!["checkpoint-".Length..], CultureInfo.InvariantCulture))
            : null;
    }

    private static string? TornCheckpoint(string run)
    {
        string checkpoints = Path.Combine(run, "checkpoints");
        if (!Directory.Exists(checkpoints))
        {
            return null;
        }

        string? torn = Directory.EnumerateDirectories(checkpoints, ".checkpoint-*").FirstOrDefault();
        return torn is null ? null : $"{Path.GetFileName(torn)[..Math.Min(18, Path.GetFileName(torn).Length)]}… ({Directory.EnumerateFiles(torn).Count()} files)";
    }

    private static string LastStep(string run)
    {
        string path = Path.Combine(run, "metrics.jsonl");
        if (!File.Exists(path))
        {
            return "none";
        }

        int step = 0;
        foreach (string line in File.ReadLines(path))
        {
            try
            {
                using JsonDocument d = JsonDocument.Parse(line);
                step = d.RootElement.GetProperty("step").GetInt32();
            }
            catch (JsonException)
            {
                return $"{step}+cut line";
            }
        }

        return step.ToString(CultureInfo.InvariantCulture);
    }

    // Everything but wall-clock fields must match bit for bit.
    private static string[] Metrics(string run) =>
        File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(line =>
        {
            using JsonDocument d = JsonDocument.Parse(line);
            return string.Join(",", d.RootElement.EnumerateObject().Where(p => p.Name is not ("tokens_per_second" or "elapsed_seconds")).Select(p => $"{p.Name}={p.Value.GetRawText()}"));
        }).ToArray();

    private static byte[] Adapter(string run) => File.ReadAllBytes(Path.Combine(run, "adapter", "adapter_model.safetensors"));

    private static string FindCli()
    {
        string path = Path.Combine(RepositoryRoot.Find(), "tools", "Onnx.Lora.Cli", "bin", "Release", "net10.0", "onnx-lora.dll");
        return File.Exists(path) ? path : throw new InvalidOperationException($"'{path}' is missing: build the CLI (dotnet build tools/Onnx.Lora.Cli -c Release) or pass --cli");
    }
}
