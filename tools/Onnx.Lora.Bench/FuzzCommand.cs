using System.Globalization;
using Onnx.Lora.Bench.Fuzz;

namespace Onnx.Lora.Bench;

/// <summary>
/// <c>fuzz --target onnx|safetensors|onnx_adapter|jsonl|adapter_config|tokenizer_json|all --iterations N --seed S [--crashes DIR] [--timeout-ms T]</c>
/// (or <c>fuzz --target T --replay FILE</c> to run one saved input again):
/// a seeded mutation campaign per reader; prints executions, exec/s and crashes, writes each crashing input to DIR.
/// Exit code 0 when no input crashed, 1 otherwise.
/// </summary>
internal static class FuzzCommand
{
    public static int Run(string[] args)
    {
        string target = "all", crashDir = Path.Combine("out", "fuzz-crashes");
        string? replay = null;
        long iterations = 10_000;
        int seed = 20260510, timeoutMs = 5000;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--target": target = args[i + 1]; break;
                case "--iterations": iterations = long.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--seed": seed = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--crashes": crashDir = args[i + 1]; break;
                case "--timeout-ms": timeoutMs = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--replay": replay = args[i + 1]; break;
                default:
                    Console.Error.WriteLine($"fuzz: unknown option '{args[i]}'");
                    return 2;
            }
        }

        if (replay is not null)
        {
            return Replay(target, replay, TimeSpan.FromMilliseconds(timeoutMs));
        }

        IReadOnlyList<string> targets = target == "all" ? FuzzTarget.Names : [target];
        var options = new FuzzOptions { Iterations = iterations, Seed = seed, PerInputTimeout = TimeSpan.FromMilliseconds(timeoutMs) };
        Console.WriteLine($"| reader | executions | accepted | rejected (ToolchainException) | exec/s | crashes | distinct |");
        Console.WriteLine($"|---|---:|---:|---:|---:|---:|---:|");
        int total = 0;
        foreach (string name in targets)
        {
            using FuzzTarget t = FuzzTarget.Create(name);
            FuzzReport r = FuzzEngine.Run(t, options);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {r.Executions:N0} | {r.Accepted:N0} | {r.Rejected:N0} | {r.ExecutionsPerSecond:N0} | {r.Crashes.Count} | {r.DistinctCrashes} |"));
            Console.WriteLine("    rejected as: " + string.Join(", ", r.RejectionCauses.OrderByDescending(p => p.Value).Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Key} {p.Value:N0}"))));
            foreach (IGrouping<(string Kind, string Where), FuzzCrash> g in r.Crashes.GroupBy(c => (c.Kind, c.Where)))
            {
                Console.WriteLine($"    {g.Count()} × {g.Key.Kind} at {g.Key.Where}: {g.First().Message} (first: iteration {g.First().Iteration})");
            }

            if (r.Crashes.Count > 0)
            {
                Directory.CreateDirectory(crashDir);
                foreach (FuzzCrash c in r.Crashes)
                {
                    string stem = Path.Combine(crashDir, string.Create(CultureInfo.InvariantCulture, $"{name}-{seed}-{c.Iteration}"));
                    File.WriteAllBytes(stem + ".bin", c.Input);
                    File.WriteAllText(stem + ".txt", $"{c.Kind} at {c.Where}: {c.Message}{Environment.NewLine}");
                }
            }

            total += r.Crashes.Count;
        }

        if (total > 0)
        {
            Console.WriteLine($"crashing inputs written to {Path.GetFullPath(crashDir)}");
        }

        return total == 0 ? 0 : 1;
    }

    // One saved input (a .bin from --crashes) run again against today's reader: exit 0 when it loads or is rejected.
    private static int Replay(string target, string file, TimeSpan timeout)
    {
        using FuzzTarget t = FuzzTarget.Create(target);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long before = GC.GetTotalAllocatedBytes(precise: true);
        try
        {
            var run = Task.Run(() => t.Execute(File.ReadAllBytes(file)));
            if (!run.Wait(timeout))
            {
                Console.WriteLine($"{file}: hang (no result after {timeout.TotalSeconds:0.#} s)");
                return 1;
            }

            Console.WriteLine($"{file}: accepted in {clock.ElapsedMilliseconds} ms, {GC.GetTotalAllocatedBytes(precise: true) - before:N0} bytes allocated");
        }
        catch (AggregateException e) when (e.InnerException is Onnx.Lora.Ir.ToolchainException rejected)
        {
            Console.WriteLine($"{file}: rejected in {clock.ElapsedMilliseconds} ms, {GC.GetTotalAllocatedBytes(precise: true) - before:N0} bytes allocated: {rejected.GetType().Name}: {rejected.Message.Split('\n')[0]}");
        }
        catch (AggregateException e)
        {
            Console.WriteLine($"{file}: CRASH {e.InnerException}");
            return 1;
        }

        return 0;
    }
}
