using System.Text.Json.Nodes;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.BadInput;

/// <summary>Hostile JSONL data and tokenizer files: each gives a <see cref="DataException"/> naming the file and the line / field.</summary>
[TestClass]
public sealed class DataBadInputTests
{
    private static readonly string s_tokenizer = Fixtures.Path("stories260K", "tok512.model");

    private static DataException LoadDataFails(string[] lines, params string[] expected)
    {
        using var dir = new TempDir();
        string path = dir.File("data.jsonl");
        File.WriteAllLines(path, lines);
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512 }));
        foreach (string s in expected)
        {
            StringAssert.Contains(e.Message, s);
        }

        return e;
    }

    [TestMethod]
    public void Jsonl_InvalidJsonLine_ThrowsNamingFileAndLine()
    {
        LoadDataFails(["{\"text\": \"Once upon a time.\"}", "{\"text\": \"The end.\"", "{\"text\": \"ok\"}"], "data.jsonl:2", "invalid JSON");
    }

    [TestMethod]
    public void Jsonl_RowLongerThanTheBound_ThrowsNamingLineWithoutHoldingIt()
    {
        using var dir = new TempDir();
        string path = dir.File("data.jsonl");
        // A 3 MB "row" with no newline after it: what a binary file or a broken export looks like.
        File.WriteAllText(path, "{\"text\": \"fine\"}\n{\"text\": \"" + new string('a', 3_000_000));
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        long before = GC.GetAllocatedBytesForCurrentThread();

        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512, MaxRowChars = 100_000 }));

        StringAssert.Contains(e.Message, "data.jsonl:2");
        StringAssert.Contains(e.Message, "longer than 100,000 characters");
        Assert.IsLessThan(2_000_000L, GC.GetAllocatedBytesForCurrentThread() - before, "the 3 MB row is never built as a string");
    }

    [TestMethod]
    public void Read_MixedLineEndingsAcrossBufferBoundaries_EqualsFileReadLines()
    {
        using var dir = new TempDir();
        string path = dir.File("lines.txt");
        var random = new Random(11);
        string[] endings = ["\n", "\r\n", "\r"];
        var text = new System.Text.StringBuilder();
        while (text.Length < 300_000) // several 64 Ki-char buffers, so endings (also \r|\n pairs) straddle reads
        {
            text.Append(random.Next(4) == 0 ? "" : new string((char)('a' + random.Next(26)), random.Next(1, 5000)));
            text.Append(random.Next(5) == 0 ? "é漢" : "");
            text.Append(endings[random.Next(endings.Length)]);
        }

        text.Append("last line without a newline");
        File.WriteAllText(path, text.ToString());

        string[] expected = File.ReadLines(path).ToArray();
        BoundedLineReader.Line[] actual = BoundedLineReader.Read(path, 10_000).ToArray();

        CollectionAssert.AreEqual(expected, actual.Select(l => l.Text).ToArray());
        CollectionAssert.AreEqual(Enumerable.Range(1, expected.Length).ToArray(), actual.Select(l => l.Number).ToArray());
    }

    [TestMethod]
    public void Jsonl_DeeplyNestedLine_ThrowsNamingLineInsteadOfRecursing()
    {
        string deep = "{\"text\": " + new string('[', 5000) + new string(']', 5000) + "}";
        LoadDataFails(["{\"text\": \"fine\"}", deep], "data.jsonl:2");
    }

    [TestMethod]
    [DataRow("[1, 2]", "expected a JSON object")]
    [DataRow("{\"text\": 7}", "'text' must be a string")]
    [DataRow("{\"messages\": \"hi\"}", "'messages' must be an array")]
    [DataRow("{\"messages\": [7]}", "messages[0]")]
    [DataRow("{\"unknown\": \"x\"}", "no known fields")]
    [DataRow("{\"text\": \"a\\ud800b\"}", "field 'text' is not valid text")]
    [DataRow("{\"messages\": [{\"role\": \"user\", \"content\": \"\\udc00\"}]}", "messages[0]: field 'content' is not valid text")]
    [DataRow("{\"\\ud800\": \"x\"}", "a field name or value is not valid text")]
    public void Jsonl_WrongShapes_ThrowNamingLineAndField(string line, string expected)
    {
        LoadDataFails([line], "data.jsonl:1", expected);
    }

    [TestMethod]
    public void Jsonl_RowTooLongForSeqLength_ThrowsBeforeTokenizing()
    {
        using var dir = new TempDir();
        string path = dir.File("data.jsonl");
        // 1 Mi chars of text: tokenizing it first would allocate ~180 MB (measured by the jsonl fuzz target) to refuse it.
        File.WriteAllText(path, "{\"text\": \"fine\"}\n{\"text\": \"" + string.Concat(Enumerable.Repeat("Lily ran. ", 1 << 17)) + "\"}\n");
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        long before = GC.GetAllocatedBytesForCurrentThread();

        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512 }));

        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        StringAssert.Contains(e.Message, "data.jsonl:2: the example has 1,310,720 characters, more than the sequence length 64 can hold");
        StringAssert.Contains(e.Message, "1 example(s) are longer than seq_length 64");
        Assert.IsLessThan(32L << 20, allocated, "reading a 1.3 M-char row costs a few copies of it, not a tokenization");
    }

    [TestMethod]
    public void Jsonl_LongestRowTheBoundAllows_StillTokenizedAndJudgedByTokens()
    {
        // Just under the char bound the row is tokenized as before, and refused by its token count (not its chars).
        using var dir = new TempDir();
        string path = dir.File("data.jsonl");
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        int chars = 4 * 64 * tokenizer.MaxTokenChars;
        File.WriteAllText(path, "{\"text\": \"" + new string('a', chars) + "\"}\n");

        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512 }));

        StringAssert.Contains(e.Message, "tokens, more than the sequence length 64");
    }

    [TestMethod]
    public void Jsonl_InvalidUtf8_ThrowsOrReplacesNeverCrashes()
    {
        using var dir = new TempDir();
        string path = dir.File("bin.jsonl");
        File.WriteAllBytes(path, [.. "{\"text\": \""u8, 0xC3, 0x28, 0xFF, .. "\"}\n"u8, 0x00, 0x01, 0x02, (byte)'\n']);
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        var e = Assert.ThrowsExactly<DataException>(() => JsonlDataset.Load(path, tokenizer, new DatasetOptions { MaxTokens = 64, ModelVocabSize = 512 }));
        // Line 1 holds the invalid bytes (C3 28 FF, after 10 bytes of JSON): refused there, never decoded to U+FFFD.
        StringAssert.Contains(e.Message, "bin.jsonl:1: byte 11");
        StringAssert.Contains(e.Message, "not valid UTF-8");
    }

    private static DataException LoadTokenizerFails(Action<JsonObject> edit, params string[] expected)
    {
        using var dir = new TempDir();
        var json = JsonNode.Parse(File.ReadAllText(Fixtures.Path("ortgenai-tiny-gqa", "tokenizer.json")))!.AsObject();
        edit(json);
        string path = dir.File("tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load(path));
        StringAssert.Contains(e.Message, path);
        foreach (string s in expected)
        {
            StringAssert.Contains(e.Message, s);
        }

        return e;
    }

    [TestMethod]
    public void Tokenizer_FixtureLoads()
    {
        Assert.IsNotNull(TextTokenizer.Load(Fixtures.Path("ortgenai-tiny-gqa", "tokenizer.json")));
    }

    [TestMethod]
    public void Tokenizer_NoModel_ThrowsNamingField() =>
        LoadTokenizerFails(j => j.Remove("model"), "\"model\"");

    [TestMethod]
    public void Tokenizer_VocabIsArray_ThrowsNamingField() =>
        LoadTokenizerFails(j => j["model"]!["vocab"] = new JsonArray(1, 2), "model.vocab");

    [TestMethod]
    public void Tokenizer_VocabIdNotInteger_ThrowsNamingToken() =>
        LoadTokenizerFails(j => j["model"]!["vocab"]!["zzz_hostile"] = "seven", "model.vocab['zzz_hostile']");

    [TestMethod]
    public void Tokenizer_MergeNotPair_ThrowsNamingIndex() =>
        LoadTokenizerFails(j => j["model"]!["merges"] = new JsonArray(new JsonArray("a"), 5), "model.merges[0]");

    [TestMethod]
    public void Tokenizer_AddedTokenWithoutId_ThrowsNamingIndex() =>
        LoadTokenizerFails(j => j["added_tokens"] = new JsonArray(new JsonObject { ["content"] = "<x>" }), "added_tokens[0]");

    [TestMethod]
    public void Tokenizer_PrependWithoutString_ThrowsNamingField() =>
        LoadTokenizerFails(j => j["normalizer"] = new JsonObject { ["type"] = "Prepend", ["prepend"] = null }, "normalizer Prepend needs \"prepend\" as a string");

    [TestMethod]
    [DataRow("{\"String\": \"\"}")]
    [DataRow("{\"Regex\": \"a*\"}")]
    public void Tokenizer_SplitPatternMatchingEmpty_ThrowsInsteadOfLooping(string pattern) =>
        LoadTokenizerFails(j => j["pre_tokenizer"] = new JsonObject { ["type"] = "Split", ["pattern"] = JsonNode.Parse(pattern), ["behavior"] = "Isolated" }, "matches the empty string");

    [TestMethod]
    public void Tokenizer_EmptyAddedToken_ThrowsInsteadOfLoopingInEncode() =>
        LoadTokenizerFails(j => j["added_tokens"]!.AsArray().Add(new JsonObject { ["id"] = 0, ["content"] = "" }), "has empty \"content\"");

    [TestMethod]
    public void Tokenizer_HugeReplaceContent_ThrowsInsteadOfMultiplyingText() =>
        LoadTokenizerFails(
            j => j["normalizer"] = new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = new string('x', 1 << 20) },
            "normalizer Replace \"content\" is 1,048,576 chars long");

    [TestMethod]
    public void Tokenizer_IdNearIntMax_ThrowsInsteadOfOverflowingVocabSize() =>
        LoadTokenizerFails(j => j["model"]!["vocab"]!["zzz_hostile"] = int.MaxValue, "model.vocab['zzz_hostile'] is 2147483647", "[0, 16777216)");

    [TestMethod]
    public void Tokenizer_PathologicalSplitRegex_EncodeThrowsWithinTheBound()
    {
        using var dir = new TempDir();
        var json = JsonNode.Parse(File.ReadAllText(Fixtures.Path("ortgenai-tiny-gqa", "tokenizer.json")))!.AsObject();
        json["pre_tokenizer"] = new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = "(a+)+$" }, ["behavior"] = "Isolated" };
        string path = dir.File("tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        TextTokenizer tokenizer = TextTokenizer.Load(path);
        var clock = System.Diagnostics.Stopwatch.StartNew();

        // 40 a's then '!': (a+)+$ backtracks through 2^40 splits before failing.
        var e = Assert.ThrowsExactly<DataException>(() => tokenizer.Encode(new string('a', 40) + "!"));

        StringAssert.Contains(e.Message, "(a+)+$");
        StringAssert.Contains(e.Message, "took over 500 ms");
        Assert.IsLessThan(3, clock.Elapsed.TotalSeconds);
    }

    [TestMethod]
    [DataRow("{{ 99999999999999999999 }}", "integer literal 99999999999999999999 does not fit 64 bits")]
    [DataRow("{{ range(100000000)|length }}", "range(0, 100000000) has more than 100,000 items")]
    [DataRow("{{ range('a') }}", "range() takes one or two integers")]
    public void ChatTemplate_HostileArithmetic_ThrowsDataException(string template, string expected)
    {
        var e = Assert.ThrowsExactly<DataException>(() => ChatTemplate.Parse(template).Render([new ChatMessage("user", "hi")], "<s>", "</s>"));
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void ChatTemplate_DeepNestingOnASmallStack_ThrowsDataExceptionNotStackOverflow()
    {
        // 256 KiB of stack (a thread-pool thread has more, the main thread far more): 20,000 nested blocks or
        // parentheses need several MB, so without the guard this would kill the test process.
        string blocks = string.Concat(Enumerable.Repeat("{% if 1 %}", 20_000)) + string.Concat(Enumerable.Repeat("{% endif %}", 20_000));
        string parens = "{{ " + new string('(', 20_000) + "1" + new string(')', 20_000) + " }}";
        var messages = new List<DataException>();
        var thread = new Thread(() =>
        {
            foreach (string template in new[] { blocks, parens })
            {
                try
                {
                    ChatTemplate.Parse(template).Render([new ChatMessage("user", "hi")], "", "");
                }
                catch (DataException e)
                {
                    messages.Add(e);
                }
            }
        }, 256 << 10);
        thread.Start();
        thread.Join();

        Assert.HasCount(2, messages);
        // Whichever recursion runs out first (a block, or the "if 1" expression inside it) names the offset.
        StringAssert.Contains(messages[0].Message, "nested too deeply");
        StringAssert.Contains(messages[1].Message, "expression is nested too deeply");
    }

    [TestMethod]
    public void ChatTemplate_MinValueModuloMinusOne_IsZeroAsInPython()
    {
        // Python: -9223372036854775808 % -1 == 0; C#'s long remainder throws OverflowException for this pair.
        RenderedChat r = ChatTemplate.Parse("{{ (-9223372036854775807 - 1) % -1 }}").Render([new ChatMessage("user", "hi")], "", "");
        Assert.AreEqual("0", r.Text);
    }

    [TestMethod]
    public void Tokenizer_NotJson_ThrowsNamingFile()
    {
        using var dir = new TempDir();
        File.WriteAllText(dir.File("tokenizer.json"), "{\"model\": ");
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load(dir.File("tokenizer.json")));
        StringAssert.Contains(e.Message, "tokenizer.json");
    }

    [TestMethod]
    public void Tokenizer_ConfigOfWrongShape_ThrowsNamingFolderFiles()
    {
        using var dir = new TempDir();
        File.Copy(Fixtures.Path("ortgenai-tiny-gqa", "tokenizer.json"), dir.File("tokenizer.json"));
        File.WriteAllText(dir.File("tokenizer_config.json"), "[\"bos_token\"]");
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load(dir.File("tokenizer.json")));
        StringAssert.Contains(e.Message, "tokenizer_config.json");
    }

    [TestMethod]
    public void Tokenizer_GarbageSentencePiece_ThrowsNamingFile()
    {
        using var dir = new TempDir();
        File.WriteAllBytes(dir.File("tok.model"), Enumerable.Range(0, 2048).Select(i => (byte)(i * 131 + 7)).ToArray());
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load(dir.File("tok.model")));
        StringAssert.Contains(e.Message, "tok.model");
    }
}
