using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>
/// TRL's handling of examples longer than the sequence length: without packing they are truncated (by default) or
/// refused on request; with packing they are split across rows; either way the run is told how many.
/// </summary>
[TestClass]
public sealed class OverlongExampleTests
{
    private const int Ignore = TokenizedExample.IgnoreIndex;

    private static TokenizedExample Example(int first, int length) =>
        new(Enumerable.Range(first, length).ToArray(), Enumerable.Range(first, length).ToArray(), $"x:{first}");

    [TestMethod]
    public void Pack_ExampleLongerThanARow_FullChunksAreRowsAndTheTailIsPacked()
    {
        TokenizedExample[] examples = [Example(100, 3), Example(200, 19), Example(300, 2)];
        List<TrainingRow> rows = SequencePacker.Pack(examples, seqLength: 8);

        Assert.HasCount(3, rows);
        CollectionAssert.AreEqual(new[] { 200, 201, 202, 203, 204, 205, 206, 207 }, rows[0].InputIds, "first full chunk");
        CollectionAssert.AreEqual(new[] { 208, 209, 210, 211, 212, 213, 214, 215 }, rows[1].InputIds, "second full chunk");
        CollectionAssert.AreEqual(new[] { 100, 101, 102, 216, 217, 218, 300, 301 }, rows[2].InputIds, "the tail packs with the short examples around it");
        CollectionAssert.AreEqual(new[] { 100, 101, 102, Ignore, 217, 218, Ignore, 301 }, rows[2].Labels);
        Assert.AreEqual(examples.Sum(e => e.InputIds.Length), rows.Sum(r => r.InputIds.Length), "no token lost or duplicated");
    }

    private static TrainOptions Options(TempDir temp, params string[] rows)
    {
        string data = temp.File("data.jsonl");
        File.WriteAllLines(data, rows.Select(r => $$"""{"text": "{{r}}"}"""));
        return new TrainOptions
        {
            Model = "m.onnx",
            Data = data,
            Tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model"),
            SeqLength = 16,
            BatchSize = 2,
        };
    }

    private static readonly string s_long = string.Join(' ', Enumerable.Repeat("Once upon a time there was a little girl.", 6));

    [TestMethod]
    public void Prepare_OverlongWithoutPacking_TruncatesByDefaultAndCounts()
    {
        using var temp = new TempDir();
        PreparedData data = DataPipeline.Prepare(Options(temp, "A short one.", s_long, s_long), 512, null, "m");

        Assert.AreEqual(2, data.TrainOverlong);
        Assert.IsFalse(data.OverlongSplit);
        Assert.AreEqual(3, data.Train.RowCount);
        Assert.AreEqual(16, data.Train.Next().SeqLength, "the truncated rows fill seq_length exactly");
        StringAssert.Contains(data.OverlongNote(16), "2 training and 0 eval example(s) are longer than seq_length 16: truncated");
    }

    [TestMethod]
    public void Prepare_OverlongWithPacking_SplitsAcrossRowsAndCounts()
    {
        using var temp = new TempDir();
        TrainOptions options = Options(temp, "A short one.", s_long) with { Packing = true };
        PreparedData data = DataPipeline.Prepare(options, 512, null, "m");

        Assert.AreEqual(1, data.TrainOverlong);
        Assert.IsTrue(data.OverlongSplit);
        Assert.IsGreaterThan(2, data.Train.RowCount, "the long example became several rows");
        StringAssert.Contains(data.OverlongNote(16), "split across packed rows");
    }

    [TestMethod]
    public void Prepare_OverlongWithTruncateFalse_RefusesWithAShortMessage()
    {
        using var temp = new TempDir();
        TrainOptions options = Options(temp, "A short one.", s_long) with { Truncate = false };
        var e = Assert.ThrowsExactly<DataException>(() => DataPipeline.Prepare(options, 512, null, "m"));
        StringAssert.Contains(e.Message, "data.jsonl:2: the example has");
        Assert.IsLessThan(600, e.Message.Length);
    }

    [TestMethod]
    public void Prepare_NoOverlong_HasNoNote()
    {
        using var temp = new TempDir();
        PreparedData data = DataPipeline.Prepare(Options(temp, "A short one."), 512, null, "m");
        Assert.AreEqual(0, data.TrainOverlong);
        Assert.IsNull(data.OverlongNote(16));
    }
}
