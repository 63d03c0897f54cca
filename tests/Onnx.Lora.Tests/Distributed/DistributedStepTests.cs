using Onnx.Lora.Tests.Support;
using Onnx.Lora.Tests.Trainer;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Distributed;

/// <summary>
/// The data-parallel optimizer step (<see cref="LoraTrainingSession.Step(IReadOnlyList{TrainingBatch}, Span{double})"/>)
/// with ranks as threads: two ranks, each on half of a batch, must train exactly like one session on the whole batch
/// (the reference is the ordinary single-process step, which never reduces anything).
/// </summary>
[TestClass]
public sealed class DistributedStepTests
{
    private static TempDir? s_temp;
    private static TrainingArtifacts? s_artifacts;

    [ClassInitialize]
    public static void BuildArtifacts(TestContext context)
    {
        s_temp = new TempDir();
        s_artifacts = LoraForTraining.StoriesArtifacts(s_temp, seed: 5);
    }

    [ClassCleanup]
    public static void Cleanup() => s_temp?.Dispose();

    [TestMethod]
    public void Step_TwoRanksOnHalvesOfUnevenBatches_EqualsOneSessionOnTheWholeBatches()
    {
        // Rows of different lengths and padding, so the ranks count different numbers of target tokens: a plain mean of
        // the two ranks' gradients would differ from the one-process step; the token-weighted sum must not.
        var random = new Random(20261203);
        const int Steps = 3, Seq = 12;
        var batches = Enumerable.Range(0, Steps).Select(_ => RandomRows(random, rows: 4, Seq)).ToArray();

        using LoraTrainingSession single = LoraTrainingSession.Create(s_artifacts!, Options(null));
        var singleResults = batches.Select(b => single.Step(Batch(b, Seq))).ToArray();

        using var ranks = new InProcessRanks(2);
        var results = new TrainStepResult[2][];
        var parameters = new Dictionary<string, float[]>[2];
        var sums = new double[2][];
        Parallel.For(0, 2, new ParallelOptions { MaxDegreeOfParallelism = 2 }, rank =>
        {
            using LoraTrainingSession session = LoraTrainingSession.Create(s_artifacts!, Options(ranks.Communicators[rank]));
            results[rank] = new TrainStepResult[Steps];
            for (int s = 0; s < Steps; s++)
            {
                long[][] half = rank == 0 ? batches[s][..1] : batches[s][1..]; // 1 row vs 3 rows: unequal token counts.
                double[] counters = [rank + 1, 10 * (rank + 1)];
                results[rank][s] = session.Step([Batch(half, Seq)], counters);
                sums[rank] = counters;
            }

            parameters[rank] = session.Parameters.ToDictionary(p => p.Name, p => session.GetParameter(p.Name).ToArray());
        });

        CollectionAssert.AreEqual(new[] { Steps, Steps }, ranks.Calls, "one all-reduce per optimizer step on each rank");
        CollectionAssert.AreEqual(new[] { 3.0, 30.0 }, sums[0], "step counters come back summed over the ranks");
        CollectionAssert.AreEqual(sums[0], sums[1]);
        for (int s = 0; s < Steps; s++)
        {
            Assert.AreEqual(singleResults[s].Tokens, results[0][s].Tokens, "global target tokens");
            Assert.AreEqual(singleResults[s].Loss, results[0][s].Loss, 1e-5 * Math.Abs(singleResults[s].Loss), $"step {s + 1} loss");
            Assert.AreEqual(singleResults[s].GradientNorm, results[0][s].GradientNorm, 1e-5 * singleResults[s].GradientNorm, $"step {s + 1} gradient norm");
            Assert.AreEqual(results[0][s], results[1][s], "both ranks report the same step");
        }

        double moved = 0;
        foreach (TrainableTensor p in single.Parameters)
        {
            float[] expected = single.GetParameter(p.Name).ToArray();
            CollectionAssert.AreEqual(parameters[0][p.Name], parameters[1][p.Name], $"'{p.Name}': the ranks' parameters must stay bit-identical");
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.AreEqual(expected[i], parameters[0][p.Name][i], 1e-5, $"'{p.Name}'[{i}]");
            }
        }

        foreach (TrainableTensor p in single.Parameters)
        {
            using LoraTrainingSession fresh = LoraTrainingSession.Create(s_artifacts!, Options(null));
            moved = Math.Max(moved, fresh.GetParameter(p.Name).ToArray().Zip(parameters[0][p.Name], (a, b) => Math.Abs(a - b)).Max());
        }

        Assert.IsGreaterThan(1e-3, moved, "the steps must move the parameters, or the comparison proves nothing");
    }

    [TestMethod]
    public void Step_WithoutCommunicator_LeavesStepCountersUnchanged()
    {
        using LoraTrainingSession session = LoraTrainingSession.Create(s_artifacts!, Options(null));
        double[] counters = [7, 11];
        session.Step([Batch(RandomRows(new Random(1), rows: 2, 8), 8)], counters);
        CollectionAssert.AreEqual(new[] { 7.0, 11.0 }, counters);
    }

    private static TrainingSessionOptions Options(Onnx.Lora.Trainer.Distributed.ICommunicator? communicator) =>
        new() { IntraOpThreads = 1, LearningRate = 1e-2f, MaxGradientNorm = 1f, Communicator = communicator };

    // Each row: a random number of real tokens (3..seq), the rest padding (mask 0, label -100).
    private static long[][] RandomRows(Random random, int rows, int seq) =>
        Enumerable.Range(0, rows).Select(_ =>
        {
            int length = random.Next(3, seq + 1);
            return Enumerable.Range(0, seq).Select(i => i < length ? random.Next(3, 512) : -1L).ToArray();
        }).ToArray();

    private static TrainingBatch Batch(long[][] rows, int seq)
    {
        long[] ids = rows.SelectMany(r => r.Select(t => t < 0 ? 0 : t)).ToArray();
        long[] mask = rows.SelectMany(r => r.Select(t => t < 0 ? 0L : 1L)).ToArray();
        long[] labels = rows.SelectMany(r => r.Select(t => t < 0 ? -100 : t)).ToArray();
        return new TrainingBatch { InputIds = ids, AttentionMask = mask, Labels = labels, BatchSize = rows.Length, SequenceLength = seq };
    }
}
