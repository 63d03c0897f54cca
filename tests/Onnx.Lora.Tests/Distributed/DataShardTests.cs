using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Distributed;

/// <summary>Sharded loaders (<see cref="DataLoader.UseShard"/>) against one loader with the global batch size.</summary>
[TestClass]
public sealed class DataShardTests
{
    [TestMethod]
    [DataRow(2, 4)]
    [DataRow(3, 2)]
    public void Next_ShardsOfEveryRank_TogetherServeExactlyTheRowsOfOneLoaderWithTheGlobalBatch(int ranks, int batch)
    {
        // 19 rows: the last global batch of an epoch is short, and some ranks get fewer rows or none.
        List<TrainingRow> rows = Enumerable.Range(0, 19).Select(i =>
        {
            int[] ids = Enumerable.Range(0, 2 + (i % 5)).Select(t => 100 + (i * 10) + t).ToArray();
            return new TrainingRow(ids, ids, 1);
        }).ToList();
        var global = new DataLoader(rows, batch * ranks, seqLength: 16, padId: 0, seed: 9);
        var shards = Enumerable.Range(0, ranks).Select(r =>
        {
            var loader = new DataLoader(rows, batch, seqLength: 16, padId: 0, seed: 9);
            loader.UseShard(r, ranks);
            return loader;
        }).ToArray();

        Assert.AreEqual(global.BatchesPerEpoch, shards[0].BatchesPerEpoch);
        bool sawEmptyShard = false;
        for (int step = 0; step < 3 * global.BatchesPerEpoch; step++)
        {
            Batch g = global.Next();
            var expected = RowsOf(g);
            var actual = new List<long[]>();
            int targets = 0;
            foreach (DataLoader shard in shards)
            {
                Batch b = shard.Next();
                actual.AddRange(RowsOf(b));
                targets += b.TargetTokens;
                sawEmptyShard |= b.RealRows == 0;
                Assert.AreEqual(global.Position, shard.Position, "positions stay global, the same on every rank");
            }

            Assert.AreEqual(expected.Count, actual.Count, $"step {step}: rows");
            for (int i = 0; i < expected.Count; i++)
            {
                CollectionAssert.AreEqual(expected[i], actual[i], $"step {step}, row {i}: rank order is the global order");
            }

            Assert.AreEqual(g.TargetTokens, targets, $"step {step}: target tokens");
        }

        Assert.IsTrue(sawEmptyShard, "19 rows were meant to leave a rank without rows at an epoch's end");
    }

    [TestMethod]
    public void UseShard_RankOutsideTheJob_Throws()
    {
        var loader = new DataLoader([new TrainingRow([1, 2], [1, 2], 1)], 1, 4, 0, 1);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => loader.UseShard(2, 2));
    }

    // The real tokens of each real row (padding stripped), in batch order.
    private static List<long[]> RowsOf(Batch b)
    {
        var rows = new List<long[]>();
        for (int r = 0; r < b.RealRows; r++)
        {
            rows.Add(Enumerable.Range(0, b.SeqLength).Where(c => b.AttentionMask[(r * b.SeqLength) + c] != 0)
                .Select(c => b.InputIds[(r * b.SeqLength) + c]).ToArray());
        }

        return rows;
    }
}
