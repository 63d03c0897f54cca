using System.Diagnostics;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>One input that crashed (an exception other than a ToolchainException subtype), hung, or allocated too much.</summary>
/// <param name="Iteration">The iteration that produced it (replay: same seed, same iteration).</param>
/// <param name="Kind">Exception type name, "hang" or "allocation".</param>
/// <param name="Message">The exception message (first line) or the measurement.</param>
/// <param name="Where">The top stack frame, used to count distinct crashes.</param>
/// <param name="Input">The input bytes.</param>
public sealed record FuzzCrash(long Iteration, string Kind, string Message, string Where, byte[] Input);

/// <summary>What a campaign did.</summary>
/// <param name="RejectionCauses">Rejections by "ExceptionType(InnerExceptionType)": shows which checks fire, and how often a
/// raw exception was only caught by a reader's last-resort wrapper.</param>
public sealed record FuzzReport(string Target, long Executions, long Accepted, long Rejected, TimeSpan Elapsed, IReadOnlyList<FuzzCrash> Crashes, IReadOnlyDictionary<string, long> RejectionCauses)
{
    /// <summary>Executions per second.</summary>
    public double ExecutionsPerSecond => Executions / Math.Max(Elapsed.TotalSeconds, 1e-9);

    /// <summary>Crashes grouped by kind and top frame.</summary>
    public int DistinctCrashes => Crashes.Select(c => (c.Kind, c.Where)).Distinct().Count();
}

/// <summary>How to run a campaign.</summary>
public sealed record FuzzOptions
{
    /// <summary>Inputs to try.</summary>
    public long Iterations { get; init; } = 10_000;

    /// <summary>Campaign seed; iteration i uses its own generator seeded from (seed, i), so any input can be replayed alone.</summary>
    public int Seed { get; init; } = 20260510;

    /// <summary>Longest time one input may take before it counts as a hang.</summary>
    public TimeSpan PerInputTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Most bytes one input may allocate (a huge declared size must be refused, not allocated).</summary>
    public long MaxAllocatedBytes { get; init; } = 64L << 20;

    /// <summary>Stop after this many crashes (keeps a broken reader from filling the disk).</summary>
    public int MaxCrashes { get; init; } = 100;
}

/// <summary>
/// A seeded mutation loop: each iteration mutates the seed (or, a quarter of the time, an earlier accepted input, so
/// edits stack up behind the first checks) one to four times and runs the target on a worker thread with a time bound.
/// Every input must load or throw a <see cref="ToolchainException"/> subtype; anything else is recorded as a crash.
/// </summary>
public static class FuzzEngine
{
    /// <summary>Runs <paramref name="options"/>.Iterations inputs against <paramref name="target"/>.</summary>
    public static FuzzReport Run(FuzzTarget target, FuzzOptions options)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(options);
        var crashes = new List<FuzzCrash>();
        var causes = new Dictionary<string, long>(StringComparer.Ordinal);
        var corpus = new List<byte[]> { target.Seed };
        long accepted = 0, rejected = 0, executions = 0;
        var clock = Stopwatch.StartNew();
        for (long i = 0; i < options.Iterations && crashes.Count < options.MaxCrashes; i++)
        {
            byte[] input = Input(target, corpus, options.Seed, i);
            executions++;
            Outcome outcome = Execute(target, input, options);
            switch (outcome.Kind)
            {
                case OutcomeKind.Accepted:
                    accepted++;
                    if (corpus.Count < 256 && !input.AsSpan().SequenceEqual(target.Seed))
                    {
                        corpus.Add(input);
                    }

                    break;
                case OutcomeKind.Rejected:
                    rejected++;
                    causes[outcome.Message!] = causes.GetValueOrDefault(outcome.Message!) + 1;
                    break;
                default:
                    crashes.Add(new FuzzCrash(i, outcome.CrashKind!, outcome.Message!, outcome.Where!, input));
                    break;
            }
        }

        return new FuzzReport(target.Name, executions, accepted, rejected, clock.Elapsed, crashes, causes);
    }

    /// <summary>
    /// The input of iteration <paramref name="iteration"/>. Corpus picks depend on earlier outcomes, so a replay of one
    /// iteration alone uses the seed only (<paramref name="corpus"/> with just the seed).
    /// </summary>
    public static byte[] Input(FuzzTarget target, IReadOnlyList<byte[]> corpus, int seed, long iteration)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(corpus);
        var rng = new Random(unchecked((seed * 1_000_003) ^ (int)iteration ^ (int)(iteration >> 32) * 7919));
        byte[] input = corpus.Count > 1 && rng.Next(4) == 0 ? corpus[rng.Next(corpus.Count)] : target.Seed;
        int mutations = 1 + (rng.Next(8) switch { < 4 => 0, < 6 => 1, 6 => 2, _ => 3 });
        for (int m = 0; m < mutations; m++)
        {
            input = target.Mutate(input, rng);
        }

        return input;
    }

    private static Outcome Execute(FuzzTarget target, byte[] input, FuzzOptions options)
    {
        var task = Task.Factory.StartNew(() =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                target.Execute(input);
                return Checked(Outcome.Accepted);
            }
            catch (ToolchainException e)
            {
                Outcome rejected = Checked(Outcome.Rejected);
                return rejected.Kind == OutcomeKind.Rejected
                    ? rejected with { Message = e.InnerException is null ? e.GetType().Name : $"{e.GetType().Name}({e.InnerException.GetType().Name})" }
                    : rejected;
            }
#pragma warning disable CA1031 // Any other exception is exactly what the fuzzer looks for.
            catch (Exception e)
#pragma warning restore CA1031
            {
                return Outcome.Crash(e.GetType().Name, FirstLine(e.Message), TopFrame(e));
            }

            Outcome Checked(Outcome ok)
            {
                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                return allocated > options.MaxAllocatedBytes
                    ? Outcome.Crash("allocation", $"allocated {allocated:N0} bytes for a {input.Length}-byte input", "allocation")
                    : ok;
            }
        }, CancellationToken.None, TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
        if (!task.Wait(options.PerInputTimeout))
        {
            // The stuck thread cannot be stopped; it is left running and the campaign goes on.
            return Outcome.Crash("hang", $"no result after {options.PerInputTimeout.TotalSeconds:0.#} s", "hang");
        }

        return task.Result;
    }

    private static string FirstLine(string text) => text.Split('\n', 2)[0].Trim();

    private static string TopFrame(Exception e)
    {
        StackFrame? frame = new StackTrace(e, fNeedFileInfo: false).GetFrames().FirstOrDefault(f => f.GetMethod()?.DeclaringType?.Namespace?.StartsWith("Onnx.Lora", StringComparison.Ordinal) == true);
        System.Reflection.MethodBase? method = frame?.GetMethod();
        return method is null ? e.GetType().Name : $"{method.DeclaringType?.Name}.{method.Name}";
    }

    private enum OutcomeKind
    {
        Accepted,
        Rejected,
        Crash,
    }

    private sealed record Outcome(OutcomeKind Kind, string? CrashKind = null, string? Message = null, string? Where = null)
    {
        public static Outcome Accepted { get; } = new(OutcomeKind.Accepted);

        public static Outcome Rejected { get; } = new(OutcomeKind.Rejected);

        public static Outcome Crash(string kind, string message, string where) => new(OutcomeKind.Crash, kind, message, where);
    }
}
