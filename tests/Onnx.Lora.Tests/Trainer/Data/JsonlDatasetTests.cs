using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>
/// JSONL formats, masking positions and bad-row reporting. Masking is checked through the vocabulary pieces of
/// the masked and trainable tokens: their text must spell the prompt and the completion exactly.
/// </summary>
[TestClass]
public sealed class JsonlDatasetTests
{
    private static readonly Lazy<TextTokenizer> s_tok512 = new(() => TextTokenizer.Load(Fixtures.Path("stories260K", "tok512.model")));
    private static readonly Lazy<TextTokenizer> s_llama = new(() => TextTokenizer.Load(Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json")));

    private static DatasetOptions Options(int vocab = 512, int max = 512) => new() { MaxTokens = max, ModelVocabSize = vocab };

    private static List<TokenizedExample> LoadLines(TempDir temp, DatasetOptions options, TextTokenizer tokenizer, params string[] lines)
    {
        string path = temp.File("data.jsonl");
        File.WriteAllLines(path, lines);
        return JsonlDataset.Load(path, tokenizer, options);
    }

    private static string Pieces(TextTokenizer t, IEnumerable<int> ids) => string.Concat(ids.Select(i => t.TokenText(i))).Replace('\u2581', ' ');

    [TestMethod]
    public void Load_TextRow_AddsBosAndEosAndTrainsEveryToken()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        TokenizedExample e = LoadLines(temp, Options(), t, """{"text": "Once upon a time"}""")[0];
        int[] expected = [1, .. t.Encode("Once upon a time"), 2];
        CollectionAssert.AreEqual(expected, e.InputIds);
        CollectionAssert.AreEqual(expected, e.Labels);
        Assert.AreEqual($"{temp.File("data.jsonl")}:1", e.Source);
    }

    [TestMethod]
    public void Load_PromptCompletion_MasksBosAndPromptTokensOnly()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        const string prompt = "Q: Who is the girl? A:";
        const string completion = " Lily. She is happy.";
        TokenizedExample e = LoadLines(temp, Options(), t, $$"""{"prompt": "{{prompt}}", "completion": "{{completion}}"}""")[0];

        int firstTrainable = Array.FindIndex(e.Labels, l => l != TokenizedExample.IgnoreIndex);
        Assert.IsTrue(e.Labels.Skip(firstTrainable).All(l => l != TokenizedExample.IgnoreIndex), "trainable tokens are one contiguous tail");
        Assert.AreEqual(1, e.InputIds[0]);
        Assert.AreEqual(" " + prompt, Pieces(t, e.InputIds[1..firstTrainable]), "masked tokens spell the prompt (with SentencePiece's dummy-prefix space)");
        Assert.AreEqual(completion, Pieces(t, e.InputIds[firstTrainable..^1]), "trainable tokens spell the completion");
        Assert.AreEqual(2, e.Labels[^1], "EOS is trained so the model learns to stop");
        CollectionAssert.AreEqual(e.InputIds[firstTrainable..], e.Labels[firstTrainable..]);
    }

    [TestMethod]
    public void Load_PromptCompletionWithMaskingOff_TrainsEveryToken()
    {
        using var temp = new TempDir();
        TokenizedExample e = LoadLines(temp, Options() with { CompletionOnlyLoss = false }, s_tok512.Value, """{"prompt": "Q: A:", "completion": " yes"}""")[0];
        CollectionAssert.AreEqual(e.InputIds, e.Labels);
    }

    [TestMethod]
    public void Load_AlpacaRow_RendersAlpacaPromptAndTrainsTheOutput()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        TokenizedExample e = LoadLines(temp, Options(), t, """{"instruction": "Name a color.", "input": "sky", "output": "Blue."}""")[0];
        const string expectedPrompt = "Below is an instruction that describes a task, paired with an input that provides further context. " +
            "Write a response that appropriately completes the request.\n\n### Instruction:\nName a color.\n\n### Input:\nsky\n\n### Response:\n";
        int firstTrainable = Array.FindIndex(e.Labels, l => l != TokenizedExample.IgnoreIndex);
        Assert.AreEqual(1, e.InputIds[0]);
        Assert.AreEqual(" " + expectedPrompt, DecodeBytes(t, e.InputIds[1..firstTrainable]), "masked tokens spell the Alpaca prompt (dummy-prefix space first)");
        Assert.AreEqual("Blue.", DecodeBytes(t, e.InputIds[firstTrainable..^1]));
    }

    [TestMethod]
    public void Load_MessagesWithFixtureLlama2Template_TrainsOnlyAssistantRepliesAndEos()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_llama.Value;
        TokenizedExample e = LoadLines(temp, Options(32000, 2048), t,
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]}""")[0];

        // Rendered: "<s>[INST] Hi [/INST] Hello! </s><s>[INST] Bye [/INST] See you. </s>"
        var trainableRuns = new List<string>();
        var run = new List<int>();
        for (int i = 0; i <= e.Labels.Length; i++)
        {
            if (i < e.Labels.Length && e.Labels[i] != TokenizedExample.IgnoreIndex)
            {
                run.Add(e.InputIds[i]);
            }
            else if (run.Count > 0)
            {
                trainableRuns.Add(Pieces(t, run));
                run.Clear();
            }
        }

        CollectionAssert.AreEqual(new[] { " Hello! </s>", " See you. </s>" }, trainableRuns);
        Assert.AreEqual(1, e.InputIds[0]);
        Assert.AreEqual(TokenizedExample.IgnoreIndex, e.Labels[0]);
    }

    [TestMethod]
    public void Load_MessagesWithoutTemplate_UsesDefaultChatML()
    {
        using var temp = new TempDir();
        TextTokenizer t = s_tok512.Value;
        Assert.IsNull(t.ChatTemplate);
        TokenizedExample e = LoadLines(temp, Options(), t,
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}""")[0];
        Assert.AreEqual(1, e.InputIds[0], "the default template starts with bos_token");
        int firstTrainable = Array.FindIndex(e.Labels, l => l != TokenizedExample.IgnoreIndex);
        StringAssert.StartsWith(DecodeBytes(t, e.InputIds[firstTrainable..]), "Hello<|im_end|>");
        StringAssert.EndsWith(DecodeBytes(t, e.InputIds[1..firstTrainable]), "<|im_start|>assistant\n");
        Assert.IsTrue(e.Labels.Contains(2), "EOS after the assistant turn is trained");
    }

    [TestMethod]
    public void Load_BadRows_ReportsEachRowWithFileLineAndReason()
    {
        using var temp = new TempDir();
        string path = temp.File("bad.jsonl");
        File.WriteAllLines(path,
        [
            """{"text": "fine"}""",
            """{"text": "unterminated""",
            """{"prompt": "p"}""",
            """{"text": 5}""",
            """{"text": "  "}""",
            "",
            """{"messages": []}""",
            """{"foo": "bar"}""",
            """[1, 2]""",
            """{"messages": [{"role": "user"}]}""",
        ]);
        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, s_tok512.Value, Options() with { MaxReportedErrors = 10 }));
        StringAssert.Contains(e.Message, "8 bad row(s)");
        StringAssert.Contains(e.Message, $"{path}:2: invalid JSON");
        StringAssert.Contains(e.Message, $"{path}:3: missing field 'completion'");
        StringAssert.Contains(e.Message, $"{path}:4: field 'text' must be a string, found a number");
        StringAssert.Contains(e.Message, $"{path}:5: field 'text' is empty");
        StringAssert.Contains(e.Message, $"{path}:7: field 'messages' is empty");
        StringAssert.Contains(e.Message, $"{path}:8: no known fields (found 'foo')");
        StringAssert.Contains(e.Message, $"{path}:9: expected a JSON object, found an array");
        StringAssert.Contains(e.Message, $"{path}:10: messages[0]: missing field 'content'");
        Assert.IsFalse(e.Message.Contains($"{path}:1:", StringComparison.Ordinal));
    }

    [TestMethod]
    public void Load_ManyBadRows_MessageStaysShortAndCountsTheRest()
    {
        using var temp = new TempDir();
        string path = temp.File("bad.jsonl");
        File.WriteAllLines(path, Enumerable.Repeat("""{"foo": "bar", "padding": "<filler>"}""".Replace("<filler>", new string('x', 2000), StringComparison.Ordinal), 100));
        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, s_tok512.Value, Options()));
        StringAssert.Contains(e.Message, "100 bad row(s)");
        StringAssert.Contains(e.Message, "and 97 more");
        Assert.IsLessThan(3 * 400, e.Message.Length, "three listed rows of at most 240 chars plus the header");
    }

    [TestMethod]
    public void Load_EmptyFile_Throws()
    {
        using var temp = new TempDir();
        string path = temp.File("empty.jsonl");
        File.WriteAllText(path, "\n\n");
        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, s_tok512.Value, Options()));
        StringAssert.Contains(e.Message, "holds no examples");
        StringAssert.Contains(e.Message, path);
    }

    [TestMethod]
    public void Load_OverlongExample_ThrowsWithLengthUnlessTruncating()
    {
        using var temp = new TempDir();
        string line = """{"text": "Once upon a time there was a little girl named Lily who loved to play outside"}""";
        var e = Assert.ThrowsExactly<DataException>(() => LoadLines(temp, Options(max: 8), s_tok512.Value, line));
        StringAssert.Contains(e.Message, ":1: the example has");
        StringAssert.Contains(e.Message, "more than the sequence length 8");

        TokenizedExample cut = LoadLines(temp, Options(max: 8) with { Truncate = true }, s_tok512.Value, line)[0];
        Assert.AreEqual(8, cut.InputIds.Length);
    }

    [TestMethod]
    public void Load_TokenizerLargerThanModelVocabulary_ThrowsUpFront()
    {
        using var temp = new TempDir();
        var e = Assert.ThrowsExactly<DataException>(() => LoadLines(temp, Options(vocab: 32000), s_tok512.Value, """{"text": "hi"}"""));
        StringAssert.Contains(e.Message, "512 tokens");
        StringAssert.Contains(e.Message, "32000 rows");
        e = Assert.ThrowsExactly<DataException>(() => LoadLines(temp, Options(vocab: 256), s_tok512.Value, """{"text": "hi"}"""));
        StringAssert.Contains(e.Message, "does not belong to this model");
    }

    [TestMethod]
    public void CheckSequenceLength_BeyondModelPositions_Throws()
    {
        var e = Assert.ThrowsExactly<ConfigException>(() => VocabularyGuard.CheckSequenceLength(1024, 512, "stories260K"));
        StringAssert.Contains(e.Message, "512 positions");
        VocabularyGuard.CheckSequenceLength(512, 512, "stories260K");
    }

    /// <summary>Concatenated vocabulary pieces with '▁' as space and &lt;0xXX&gt; pieces as their bytes.</summary>
    private static string DecodeBytes(TextTokenizer t, IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            string piece = t.TokenText(id)!;
            if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece.EndsWith('>'))
            {
                bytes.Add(Convert.ToByte(piece[3..5], 16));
            }
            else
            {
                bytes.AddRange(System.Text.Encoding.UTF8.GetBytes(piece.Replace('\u2581', ' ')));
            }
        }

        return System.Text.Encoding.UTF8.GetString([.. bytes]);
    }
}
