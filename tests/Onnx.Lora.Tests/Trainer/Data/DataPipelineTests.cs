using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Trainer.Data;

[TestClass]
public sealed class DataPipelineTests
{
    private static TrainOptions Options(TempDir temp, string tokenizer, bool packing) => new()
    {
        Model = "stories260K.onnx",
        Data = temp.File("train.jsonl"),
        EvalData = temp.File("eval.jsonl"),
        Tokenizer = tokenizer,
        SeqLength = 64,
        BatchSize = 2,
        Packing = packing,
    };

    private static void WriteData(TempDir temp)
    {
        File.WriteAllLines(temp.File("train.jsonl"), Enumerable.Range(0, 9).Select(i => $$"""{"prompt": "Q{{i}}:", "completion": " Tom had {{i}} red balls."}"""));
        File.WriteAllLines(temp.File("eval.jsonl"), ["""{"text": "Lily saw a cat."}"""]);
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Prepare_Tok512_BuildsLoadersOverValidatedRows(bool packing)
    {
        using var temp = new TempDir();
        WriteData(temp);
        PreparedData data = DataPipeline.Prepare(Options(temp, Fixtures.Path("stories260K", "tok512.model"), packing), 512, 512, "stories260K");

        // Greedy first-fit-in-order row count, from the example lengths.
        int[] lengths = JsonlDataset.Load(temp.File("train.jsonl"), data.Tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512 })
            .Select(e => e.InputIds.Length).ToArray();
        int expectedRows = 9;
        if (packing)
        {
            expectedRows = 1;
            int used = 0;
            foreach (int n in lengths)
            {
                if (used + n > 64)
                {
                    expectedRows++;
                    used = 0;
                }

                used += n;
            }
        }

        Assert.AreEqual(9, data.TrainExamples);
        Assert.AreEqual(expectedRows, data.Train.RowCount);
        Assert.AreEqual(1, data.Eval!.RowCount);
        Batch b = data.Train.Next();
        Assert.AreEqual(2, b.BatchSize);
        Assert.IsTrue(b.InputIds.All(id => id is >= 0 and < 512));
        Assert.IsTrue(b.TargetTokens > 0);
    }

    [TestMethod]
    public void Prepare_WrongTokenizerForModel_FailsBeforeReadingData()
    {
        using var temp = new TempDir();
        WriteData(temp);
        var e = Assert.ThrowsExactly<DataException>(() => DataPipeline.Prepare(
            Options(temp, Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json"), false), 512, 512, "stories260K"));
        StringAssert.Contains(e.Message, "32000 tokens");
        StringAssert.Contains(e.Message, "512 rows");
    }

    [TestMethod]
    public void Prepare_SeqLengthBeyondModel_Fails()
    {
        using var temp = new TempDir();
        WriteData(temp);
        // An option value beyond the model, not bad data: exit 2 (issue 16).
        var e = Assert.ThrowsExactly<ConfigException>(() => DataPipeline.Prepare(
            Options(temp, Fixtures.Path("stories260K", "tok512.model"), false) with { SeqLength = 1024 }, 512, 512, "stories260K"));
        StringAssert.Contains(e.Message, "seq_length 1024");
    }

    [TestMethod]
    public void ResumeFingerprint_ChangesWithDataShapingOptionsOnly()
    {
        var o = new TrainOptions { Model = "/a/m.onnx", Data = "/a/d.jsonl", Tokenizer = "/a/t.model" };
        Assert.AreEqual(o.ResumeFingerprint(), (o with { MaxSteps = 500, SaveSteps = 7, Model = "/moved/m.onnx" }).ResumeFingerprint());
        Assert.AreNotEqual(o.ResumeFingerprint(), (o with { Seed = 1 }).ResumeFingerprint());
        Assert.AreNotEqual(o.ResumeFingerprint(), (o with { Packing = true }).ResumeFingerprint());
    }
}
