using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.IO;

/// <summary>
/// Writers of one output with external data: whatever the interleaving, the result is one writer's complete model
/// (its .onnx beside its own .onnx.data) or a clean refusal, never A's model beside B's data.
/// </summary>
[TestClass]
public sealed class OutputLockTests
{
    private static readonly AsyncLocal<int?> s_writer = new();

    private static readonly SaveOptions s_external = new() { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 0 };

    [TestMethod]
    [DataRow(2)]
    [DataRow(4)]
    public void Save_WritersForcedToInterleaveBetweenRenames_LeaveOneWritersCompleteModel(int writers)
    {
        using var dir = new TempDir();
        string target = dir.File("m.onnx");
        var rng = new Random(20261203 + writers);
        // Writer i sleeps after renaming its data file: without the lock, another writer renames both of its files
        // in that gap and writer i's model then lands beside the other's data.
        int[] pauseMs = Enumerable.Range(0, writers).Select(_ => rng.Next(40, 120)).ToArray();
        string[][] expected = Enumerable.Range(0, writers).Select(i => TensorBytes(LoraTestModels.Base(seed: 100 + i))).ToArray();
        using var start = new Barrier(writers);
        AtomicFileBatch.BetweenRenames = path =>
        {
            if (path.StartsWith(dir.Path, StringComparison.Ordinal) && path.EndsWith(".data", StringComparison.Ordinal) && s_writer.Value is int w)
            {
                Thread.Sleep(pauseMs[w]);
            }
        };
        string[] outcome;
        try
        {
            outcome = Enumerable.Range(0, writers).Select(i => Task.Factory.StartNew(() =>
            {
                s_writer.Value = i;
                using Model model = LoraTestModels.Base(seed: 100 + i);
                start.SignalAndWait();
                try
                {
                    OnnxWriter.Save(model, target, s_external);
                    return "ok";
                }
                catch (OutputConflictException e)
                {
                    return "refused: " + e.Message;
                }
            }, TaskCreationOptions.LongRunning)).ToArray().Select(t => t.Result).ToArray();
        }
        finally
        {
            AtomicFileBatch.BetweenRenames = null;
        }

        Assert.IsTrue(outcome.Any(o => o == "ok"), string.Join("\n", outcome));
        foreach (string refused in outcome.Where(o => o != "ok"))
        {
            StringAssert.Contains(refused, "m.onnx");
        }

        string[] written = TensorBytesOf(target);
        int match = Array.FindIndex(expected, e => e.SequenceEqual(written));
        Assert.IsGreaterThanOrEqualTo(0, match, "the saved model mixes the tensors of several writers");
        Assert.AreEqual("ok", outcome[match]);
        Assert.IsFalse(File.Exists(target + ".lock") || File.Exists(target + ".data.lock"), "lock file left behind");
    }

    [TestMethod]
    public void Save_OutputLockedByAnotherWriter_FailsNamingTheOutputAndWritesNothing()
    {
        using var dir = new TempDir();
        string target = dir.File("m.onnx");
        using Model model = LoraTestModels.Base();
        using (OutputLock.Acquire(target))
        {
            var e = Assert.ThrowsExactly<OutputConflictException>(() => OnnxWriter.Save(model, target, s_external));
            StringAssert.Contains(e.Message, target);
            StringAssert.Contains(e.Message, "Another process is writing");
        }

        Assert.IsFalse(File.Exists(target) || File.Exists(target + ".data"));
        OnnxWriter.Save(model, target, s_external);
        Assert.IsTrue(File.Exists(target));
    }

    [TestMethod]
    public void Acquire_LockFileLeftByAKilledWriter_IsTakenOver()
    {
        using var dir = new TempDir();
        string target = dir.File("m.onnx");
        // A writer killed with SIGKILL leaves its lock file, but the kernel drops its flock with the process.
        File.WriteAllText(target + ".lock", "999999\n");
        using (OutputLock held = OutputLock.Acquire(target, TimeSpan.Zero))
        {
            Assert.AreEqual(target + ".lock", held.LockPath);
        }

        Assert.IsFalse(File.Exists(target + ".lock"));
    }

    private static string[] TensorBytes(Model model) =>
        model.Graph.Initializers.Values.OrderBy(v => v.Name, StringComparer.Ordinal).Select(v => Convert.ToHexString(v.Initializer!.GetBytes().Span)).ToArray();

    private static string[] TensorBytesOf(string path)
    {
        using Model model = OnnxReader.Load(path);
        Assert.IsNotEmpty(model.DataFiles, "the model has no external data: the test would prove nothing");
        return TensorBytes(model);
    }
}
