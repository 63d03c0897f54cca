using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Data;

[TestClass]
public sealed class PackingAndLoaderTests
{
    private const int Ignore = TokenizedExample.IgnoreIndex;

    private static TokenizedExample Example(int first, int length, int masked = 0) =>
        new(Enumerable.Range(first, length).ToArray(), Enumerable.Range(first, length).Select((v, i) => i < masked ? Ignore : v).ToArray(), $"x:{first}");

    [TestMethod]
    public void Pack_ShortExamples_FillsRowsGreedilyWithoutSplittingAndMasksBoundaries()
    {
        TokenizedExample[] examples = [Example(100, 3), Example(200, 4, masked: 2), Example(300, 5), Example(400, 2)];
        List<TrainingRow> rows = SequencePacker.Pack(examples, seqLength: 8);

        Assert.AreEqual(2, rows.Count);
        CollectionAssert.AreEqual(new[] { 100, 101, 102, 200, 201, 202, 203 }, rows[0].InputIds);
        // Example 2's own mask (2 tokens) is kept; its first token is masked anyway as a packing boundary.
        CollectionAssert.AreEqual(new[] { 100, 101, 102, Ignore, Ignore, 202, 203 }, rows[0].Labels);
        CollectionAssert.AreEqual(new[] { 300, 301, 302, 303, 304, 400, 401 }, rows[1].InputIds);
        CollectionAssert.AreEqual(new[] { 300, 301, 302, 303, 304, Ignore, 401 }, rows[1].Labels, "the first token of a packed example after the first is never a target");
        Assert.AreEqual(2, rows[0].ExampleCount);
        Assert.AreEqual(examples.Sum(e => e.InputIds.Length), rows.Sum(r => r.InputIds.Length), "no token lost or duplicated");
    }

    [TestMethod]
    public void Next_PadsToLongestRoundedUpAndMasksPadding()
    {
        var rows = new List<TrainingRow> { new([5, 6, 7], [5, 6, 7], 1), new([8, 9], [Ignore, 9], 1) };
        var loader = new DataLoader(rows, batchSize: 2, seqLength: 16, padId: 0, seed: 1, shuffle: false);
        Batch b = loader.Next();

        Assert.AreEqual(8, b.SeqLength, "longest row 3 rounded up to a multiple of 8");
        CollectionAssert.AreEqual(new long[] { 5, 6, 7, 0, 0, 0, 0, 0, 8, 9, 0, 0, 0, 0, 0, 0 }, b.InputIds);
        CollectionAssert.AreEqual(new long[] { 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0 }, b.AttentionMask);
        CollectionAssert.AreEqual(new long[] { 5, 6, 7, Ignore, Ignore, Ignore, Ignore, Ignore, Ignore, 9, Ignore, Ignore, Ignore, Ignore, Ignore, Ignore }, b.Labels);
        Assert.AreEqual(4, b.TargetTokens);
        Assert.AreEqual(16, b.InputIds.Length, "exactly batch x columns, so the array can back an OrtValue");

        long[] before = b.InputIds;
        loader.Next();
        Assert.AreSame(before, b.InputIds, "same column count: the same buffer is reused");
    }

    [TestMethod]
    public void Next_ShortLastBatch_FillsPaddingRowsWithoutTargets()
    {
        var rows = Enumerable.Range(0, 3).Select(i => new TrainingRow([i + 10, i + 20], [i + 10, i + 20], 1)).ToList();
        var loader = new DataLoader(rows, batchSize: 2, seqLength: 8, padId: 0, seed: 1, shuffle: false, fixedLength: true);
        loader.Next();
        Batch last = loader.Next();
        Assert.AreEqual(1, last.RealRows);
        Assert.AreEqual(8, last.SeqLength);
        Assert.IsTrue(last.Labels[8..].All(l => l == Ignore));
        Assert.AreEqual(1, last.AttentionMask[8], "a padding row keeps one visible token so attention never sees an all-masked row");
        Assert.AreEqual(new DataPosition(0, 3), loader.Position);
        loader.Next();
        Assert.AreEqual(new DataPosition(1, 2), loader.Position, "the next call starts epoch 1");
    }

    [TestMethod]
    public void EpochOrder_SameSeed_IsIdenticalAndAPermutation_DifferentEpochsDiffer()
    {
        var rows = Enumerable.Range(0, 50).Select(i => new TrainingRow([i], [i], 1)).ToList();
        var a = new DataLoader(rows, 4, 8, 0, seed: 7);
        var b = new DataLoader(rows, 4, 8, 0, seed: 7);
        CollectionAssert.AreEqual(a.EpochOrder(0), b.EpochOrder(0));
        CollectionAssert.AreEquivalent(Enumerable.Range(0, 50).ToArray(), a.EpochOrder(0));
        CollectionAssert.AreNotEqual(a.EpochOrder(0), a.EpochOrder(1));
        CollectionAssert.AreNotEqual(a.EpochOrder(0), new DataLoader(rows, 4, 8, 0, seed: 8).EpochOrder(0));
    }

    [TestMethod]
    public void Seek_ToSavedPosition_ServesTheSameBatchesAsAnUninterruptedLoader()
    {
        var rows = Enumerable.Range(0, 10).Select(i => new TrainingRow(Enumerable.Repeat(i + 3, 1 + (i % 4)).ToArray(), Enumerable.Repeat(i + 3, 1 + (i % 4)).ToArray(), 1)).ToList();
        var straight = new DataLoader(rows, 3, 8, 0, seed: 3);
        var expected = new List<long[]>();
        DataPosition? saved = null;
        for (int i = 0; i < 9; i++)
        {
            if (i == 5)
            {
                saved = straight.Position;
            }

            expected.Add((long[])straight.Next().InputIds.Clone());
        }

        var resumed = new DataLoader(rows, 3, 8, 0, seed: 3);
        resumed.Seek(saved!);
        for (int i = 5; i < 9; i++)
        {
            CollectionAssert.AreEqual(expected[i], resumed.Next().InputIds, $"batch {i}");
        }
    }

    [TestMethod]
    public void DeterministicRandom_RestoredState_ContinuesTheSameStream()
    {
        var r = new DeterministicRandom(42);
        for (int i = 0; i < 10; i++)
        {
            r.NextUInt64();
        }

        var copy = new DeterministicRandom(r.GetState());
        for (int i = 0; i < 100; i++)
        {
            Assert.AreEqual(r.NextUInt64(), copy.NextUInt64());
        }

        // Uniformity sanity: 20,000 draws of NextInt(10): every bucket within 10% of 2,000 (≈ 7σ).
        var counts = new int[10];
        for (int i = 0; i < 20_000; i++)
        {
            counts[r.NextInt(10)]++;
        }

        Assert.IsTrue(counts.All(c => Math.Abs(c - 2000) < 200), string.Join(",", counts));
    }
}
