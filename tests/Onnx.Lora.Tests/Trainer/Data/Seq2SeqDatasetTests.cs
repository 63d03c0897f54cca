using Onnx.Lora.Data;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>
/// Encoder-decoder rows: source in input_ids, target in labels, each encoded as the tokenizer's own
/// <c>tokenizer(text)</c> (tok512 adds BOS only; the target always ends in EOS), padded to the longer of the two, source padding unattended and target padding −100.
/// </summary>
[TestClass]
public sealed class Seq2SeqDatasetTests
{
    private static readonly Lazy<TextTokenizer> s_tok512 = new(() => TextTokenizer.Load(Fixtures.Path("stories260K", "tok512.model")));

    private static List<TokenizedExample> Load(TempDir temp, int max, out int overlong, params string[] lines)
    {
        string path = temp.File("data.jsonl");
        File.WriteAllLines(path, lines);
        return Seq2SeqDataset.Load(path, s_tok512.Value, new DatasetOptions { MaxTokens = max, ModelVocabSize = 512, Truncate = true }, out overlong);
    }

    [TestMethod]
    public void Load_SourceLongerThanTarget_TargetPaddedWithIgnoreIndexSourceAttended()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        TokenizedExample e = Load(temp, 64, out int overlong, """{"source": "Once upon a time there was a cat", "target": "a cat"}""")[0];
        int[] source = [1, .. t.Encode("Once upon a time there was a cat")];
        int[] target = [1, .. t.Encode("a cat"), 2];
        CollectionAssert.AreEqual(source, e.InputIds);
        CollectionAssert.AreEqual(target.Concat(Enumerable.Repeat(TokenizedExample.IgnoreIndex, source.Length - target.Length)).ToArray(), e.Labels);
        Assert.AreEqual(source.Length, e.AttendedTokens);
        Assert.AreEqual(0, overlong);
        Assert.AreEqual(target.Length, e.TrainableTokens);
    }

    [TestMethod]
    public void Load_TargetLongerThanSource_SourcePaddedWithPadIdAndNotAttended()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        TokenizedExample e = Load(temp, 64, out _, """{"source": "a dog", "target": "The dog ran to the park and played"}""")[0];
        int[] source = [1, .. t.Encode("a dog")];
        int[] target = [1, .. t.Encode("The dog ran to the park and played"), 2];
        CollectionAssert.AreEqual(source.Concat(Enumerable.Repeat(t.PadId, target.Length - source.Length)).ToArray(), e.InputIds);
        CollectionAssert.AreEqual(target, e.Labels);
        Assert.AreEqual(source.Length, e.AttendedTokens);
    }

    [TestMethod]
    public void Load_OverlongSourceAndTarget_TruncatedKeepingEosCountedOnce()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        TokenizedExample e = Load(temp, 5, out int overlong, """{"source": "Once upon a time there was a big cat", "target": "The dog ran to the park and played"}""")[0];
        Assert.AreEqual(1, overlong);
        int[] source = [1, .. t.Encode("Once upon a time there was a big cat").Take(4)];
        int[] target = [1, .. t.Encode("The dog ran to the park and played").Take(3), 2];
        CollectionAssert.AreEqual(source, e.InputIds);
        CollectionAssert.AreEqual(target, e.Labels);
    }

    [TestMethod]
    public void Next_Seq2SeqRows_MaskCoversOnlyTheSourceAndLabelsKeepTheTarget()
    {
        using var temp = new TempDir();
        List<TokenizedExample> examples = Load(temp, 64, out _, """{"source": "a dog", "target": "The dog ran to the park"}""", """{"source": "Once upon a time there was a cat", "target": "a cat"}""");
        var loader = new DataLoader(SequencePacker.Unpacked(examples), batchSize: 2, seqLength: 64, padId: 0, seed: 1, shuffle: false);
        Batch b = loader.Next();
        for (int r = 0; r < 2; r++)
        {
            TokenizedExample e = examples[r];
            for (int c = 0; c < b.SeqLength; c++)
            {
                int i = (r * b.SeqLength) + c;
                Assert.AreEqual(c < e.AttendedTokens ? 1L : 0L, b.AttentionMask[i], $"row {r} column {c}");
                Assert.AreEqual(c < e.Labels.Length ? e.Labels[c] : TokenizedExample.IgnoreIndex, b.Labels[i], $"row {r} column {c}");
            }
        }

        Assert.AreEqual(examples.Sum(e => e.TrainableTokens), b.TargetTokens);
    }

    [TestMethod]
    public void Pack_Seq2SeqRows_Refused()
    {
        using var temp = new TempDir();
        List<TokenizedExample> examples = Load(temp, 64, out _, """{"source": "a dog", "target": "a dog ran"}""");
        Assert.ThrowsExactly<ArgumentException>(() => SequencePacker.Pack(examples, 64));
    }

    [TestMethod]
    [DataRow("""{"source": "a cat"}""", "\"target\" is missing or not a string")]
    [DataRow("""{"source": "a cat", "target": 3}""", "\"target\" is missing or not a string")]
    [DataRow("""{"target": "a cat"}""", "\"source\" is missing or not a string")]
    [DataRow("""not json""", "invalid JSON")]
    public void Load_BadRow_NamesFileLineAndField(string row, string expected)
    {
        using var temp = new TempDir();
        var error = Assert.ThrowsExactly<DataException>(() => Load(temp, 64, out _, """{"source": "a", "target": "b"}""", row));
        StringAssert.Contains(error.Message, $"{temp.File("data.jsonl")}:2: ");
        StringAssert.Contains(error.Message, expected);
    }
}
