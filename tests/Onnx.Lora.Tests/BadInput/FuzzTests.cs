using Onnx.Lora.Bench.Fuzz;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Tests.BadInput;

/// <summary>
/// CI-sized fuzzing of the binary readers (ONNX, safetensors, .onnx_adapter) and the text readers (JSONL data, PEFT
/// adapter_config.json, tokenizer.json + tokenizer_config.json): every mutated input must load or throw a LoraException subtype
/// (no raw exception, no hang, no allocation far beyond the input). The long campaign is
/// <c>onnx-lora-bench fuzz --target all --iterations 300000</c> (BENCHMARKS.md).
/// </summary>
[TestClass]
public sealed class FuzzTests
{
    private const int Iterations = 1500;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [DataRow("onnx")]
    [DataRow("safetensors")]
    [DataRow("onnx_adapter")]
    [DataRow("jsonl")]
    [DataRow("adapter_config")]
    [DataRow("tokenizer_json")]
    public void Fuzz_MutatedSeeds_EveryInputLoadsOrThrowsLoraException(string target)
    {
        using FuzzTarget t = FuzzTarget.Create(target);
        t.Execute(t.Seed); // the seed itself is valid: a target whose seed fails would only test the first check

        FuzzReport report = FuzzEngine.Run(t, new FuzzOptions { Iterations = Iterations, Seed = 20260510 });

        TestContext.WriteLine($"{target}: {report.Executions} executions ({report.ExecutionsPerSecond:N0}/s), {report.Accepted} accepted, {report.Rejected} rejected");
        string crashes = string.Join(Environment.NewLine, report.Crashes.Take(5).Select(c => $"#{c.Iteration} {c.Kind} at {c.Where}: {c.Message}"));
        Assert.IsEmpty(report.Crashes, crashes);
        Assert.AreEqual(Iterations, report.Executions);
        // Both outcomes must be common, else the mutations are too weak (all accepted) or never pass the first check (all rejected).
        Assert.IsGreaterThan(Iterations / 20, report.Rejected, "rejected");
        Assert.IsGreaterThan(Iterations / 100, report.Accepted, "accepted");
    }

    [TestMethod]
    public void Run_TargetThrowingRawException_ReportsCrashWithReplayableInput()
    {
        using var target = new ThrowingTarget(input =>
        {
            if (input.Length > 0 && input[0] == 0xFF)
            {
                throw new IndexOutOfRangeException("boom");
            }

            throw new LoraException("rejected");
        });
        FuzzReport report = FuzzEngine.Run(target, new FuzzOptions { Iterations = 2000, Seed = 7 });

        Assert.IsNotEmpty(report.Crashes, "a mutation setting byte 0 to 0xFF must be found in 2000 tries");
        FuzzCrash crash = report.Crashes[0];
        Assert.AreEqual(nameof(IndexOutOfRangeException), crash.Kind);
        Assert.AreEqual(0xFF, crash.Input[0]);
        Assert.AreEqual(report.Executions, report.Rejected + report.Crashes.Count);
    }

    [TestMethod]
    public void Run_TargetThatHangs_ReportsHangWithinTheTimeBound()
    {
        using var release = new ManualResetEventSlim();
        using var target = new ThrowingTarget(_ => release.Wait(TimeSpan.FromSeconds(10)));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        FuzzReport report = FuzzEngine.Run(target, new FuzzOptions { Iterations = 1, PerInputTimeout = TimeSpan.FromMilliseconds(200) });
        release.Set();

        Assert.HasCount(1, report.Crashes);
        Assert.AreEqual("hang", report.Crashes[0].Kind);
        Assert.IsLessThan(5, clock.Elapsed.TotalSeconds);
    }

    [TestMethod]
    public void Run_TargetAllocatingHugeBuffer_ReportsAllocation()
    {
        using var target = new ThrowingTarget(_ => GC.KeepAlive(new byte[8 << 20]));
        FuzzReport report = FuzzEngine.Run(target, new FuzzOptions { Iterations = 3, MaxAllocatedBytes = 1 << 20 });

        Assert.HasCount(3, report.Crashes);
        Assert.AreEqual("allocation", report.Crashes[0].Kind);
    }

    private sealed class ThrowingTarget(Action<byte[]> execute) : FuzzTarget("test")
    {
        public override byte[] Seed { get; } = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

        public override void Execute(byte[] input) => execute(input);

        protected override byte[] MutateStructure(byte[] input, Random rng) => ByteMutator.Mutate(input, rng);
    }
}
