using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>
/// Tokenization of known strings checked against ids derived INDEPENDENTLY in the test: llama2.c's encoder over
/// tok512.bin's vocabulary and scores, and a plain rank-based BPE over the fixture tokenizer.json merges.
/// </summary>
[TestClass]
public sealed class TokenizerTests
{
    private static readonly string[] s_samples =
    [
        "Once upon a time, there was a little girl named Lily.",
        "She loved to play outside in the park!",
        "Tom said: \"Wow, 123 big cats\"",
        "héllo ☃ naïve",
    ];

    [TestMethod]
    public void Encode_SentencePieceTok512_MatchesLlama2cEncoder()
    {
        TextTokenizer tokenizer = TextTokenizer.Load(Fixtures.Path("stories260K", "tok512.model"));
        var reference = Llama2cTokenizer.Load(Fixtures.Path("stories260K", "tok512.bin"));

        Assert.AreEqual(512, tokenizer.VocabSize);
        Assert.AreEqual(1, tokenizer.BosId);
        Assert.AreEqual(2, tokenizer.EosId);
        Assert.IsTrue(tokenizer.AddBos);
        foreach (string text in s_samples)
        {
            CollectionAssert.AreEqual(reference.Encode(text), tokenizer.Encode(text), text);
        }
    }

    [TestMethod]
    public void Encode_SentencePieceTok512_DecodesBack()
    {
        TextTokenizer tokenizer = TextTokenizer.Load(Fixtures.Path("stories260K", "tok512.model"));
        Assert.AreEqual(s_samples[0], tokenizer.Decode(tokenizer.Encode(s_samples[0])));
    }

    [TestMethod]
    public void Encode_LlamaTokenizerJson_MatchesRankBpeWithByteFallback()
    {
        string path = Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json");
        TextTokenizer tokenizer = TextTokenizer.Load(path);
        var reference = RankBpe.Load(path);

        Assert.AreEqual(32000, tokenizer.VocabSize);
        Assert.AreEqual(1, tokenizer.BosId);
        Assert.AreEqual(2, tokenizer.EosId);
        Assert.AreEqual(0, tokenizer.PadId, "pad_token is <unk> in tokenizer_config.json");
        foreach (string text in s_samples)
        {
            // HF's llama normalizer: prepend '▁', replace ' ' by '▁'; one word; unknown chars fall back to <0xXX>.
            string normalized = "\u2581" + text.Replace(' ', '\u2581');
            CollectionAssert.AreEqual(reference.EncodeWord(normalized, byteFallback: true), tokenizer.Encode(text), text);
        }
    }

    [TestMethod]
    public void Encode_LlamaTokenizerJson_SpecialTokenInTextBecomesItsId()
    {
        TextTokenizer tokenizer = TextTokenizer.Load(Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json"));
        var offsets = new List<int>();
        var ids = new List<int>();
        tokenizer.Encode("<s>[INST] hi [/INST]", ids, offsets);
        Assert.AreEqual(1, ids[0]);
        Assert.AreEqual(0, offsets[0]);
        Assert.AreEqual(3, offsets[1], "the first ordinary token starts right after '<s>'");
        CollectionAssert.AreEqual(tokenizer.Encode("[INST] hi [/INST]"), ids.Skip(1).ToList(), "HF splits added tokens out before normalizing");
    }

    [TestMethod]
    public void Encode_Gpt2ByteLevelTokenizerJson_MatchesRankBpeOverByteAlphabet()
    {
        string path = Fixtures.Path("ortgenai-tiny-random-gpt2-fp32", "tokenizer.json");
        TextTokenizer tokenizer = TextTokenizer.Load(path);
        var reference = RankBpe.Load(path);
        var split = new Regex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+");
        string[] byteToChar = RankBpe.Gpt2ByteAlphabet();
        foreach (string text in s_samples)
        {
            var expected = new List<int>();
            foreach (Match m in split.Matches(text))
            {
                string mapped = string.Concat(Encoding.UTF8.GetBytes(m.Value).Select(b => byteToChar[b]));
                expected.AddRange(reference.EncodeWord(mapped, byteFallback: false));
            }

            CollectionAssert.AreEqual(expected, tokenizer.Encode(text), text);
        }

        Assert.AreEqual(50256, tokenizer.EosId);
    }

    [TestMethod]
    public void Encode_CharacterVocabTokenizerJson_MapsEachCharacter()
    {
        string path = Fixtures.Path("ortgenai-tiny-gqa", "tokenizer.json");
        TextTokenizer tokenizer = TextTokenizer.Load(path);
        using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(path));
        JsonElement vocab = doc.RootElement.GetProperty("model").GetProperty("vocab");
        string text = "Hi there!";
        int[] expected = text.Select(c => vocab.GetProperty(c.ToString()).GetInt32()).ToArray();
        CollectionAssert.AreEqual(expected, tokenizer.Encode(text));
        Assert.AreEqual(0, tokenizer.BosId, "bos_token '<pad>' from tokenizer_config.json");
        Assert.AreEqual(1, tokenizer.EosId);
    }

    [TestMethod]
    public void Encode_SplitRegexThenByteLevel_NeverMergesAcrossSplits()
    {
        // Llama-3 layout: Split(Regex, Isolated) + ByteLevel(use_regex=false). The merge "a Ġ" would join "a" and the
        // following space if the text were not split first at " ?\p{L}+" boundaries.
        using var temp = new TempDir();
        string path = temp.File("tokenizer.json");
        File.WriteAllText(path, """
            {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "Ġ": 2, "aĠ": 3, "Ġb": 4},
                       "merges": ["a Ġ", "Ġ b"]},
             "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": " ?\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}}
            """);
        TextTokenizer t = TextTokenizer.Load(path);
        // Pieces: "a", " b" → "a" and "Ġb"; without the split, "a Ġ" (rank 0) would win and give [3, 1].
        CollectionAssert.AreEqual(new[] { 0, 4 }, t.Encode("a b"));
    }

    [TestMethod]
    public void Load_MissingFile_ThrowsDataExceptionNamingIt()
    {
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load("/nonexistent/tokenizer.json"));
        StringAssert.Contains(e.Message, "/nonexistent/tokenizer.json");
    }

    [TestMethod]
    public void Load_UnsupportedModelType_ThrowsNamingTheType()
    {
        using var temp = new TempDir();
        string path = temp.File("tokenizer.json");
        File.WriteAllText(path, """{"model": {"type": "WordPiece", "vocab": {"a": 0}}}""");
        var e = Assert.ThrowsExactly<DataException>(() => TextTokenizer.Load(path));
        StringAssert.Contains(e.Message, "WordPiece");
    }

    /// <summary>llama2.c's encoder (run.c encode()), written from its description, over tokenizer.bin.</summary>
    private sealed class Llama2cTokenizer
    {
        private readonly string[] _vocab;
        private readonly float[] _scores;
        private readonly Dictionary<string, int> _lookup = new(StringComparer.Ordinal);

        private Llama2cTokenizer(string[] vocab, float[] scores)
        {
            _vocab = vocab;
            _scores = scores;
            for (int i = 0; i < vocab.Length; i++)
            {
                _lookup.TryAdd(vocab[i], i);
            }
        }

        public static Llama2cTokenizer Load(string path)
        {
            using var reader = new BinaryReader(File.OpenRead(path));
            _ = reader.ReadInt32(); // max_token_length
            var vocab = new List<string>();
            var scores = new List<float>();
            while (reader.BaseStream.Position < reader.BaseStream.Length)
            {
                scores.Add(reader.ReadSingle());
                int len = reader.ReadInt32();
                vocab.Add(Encoding.UTF8.GetString(reader.ReadBytes(len)));
            }

            return new Llama2cTokenizer([.. vocab], [.. scores]);
        }

        public List<int> Encode(string text)
        {
            var tokens = new List<int>();
            if (text.Length > 0)
            {
                tokens.Add(_lookup[" "]);
            }

            // One token per code point, or its UTF-8 bytes as ids byte+3 (llama2.c's byte fallback).
            for (int i = 0; i < text.Length; i += char.IsSurrogatePair(text, i) ? 2 : 1)
            {
                string cp = char.IsSurrogatePair(text, i) ? text.Substring(i, 2) : text[i].ToString();
                if (_lookup.TryGetValue(cp, out int id))
                {
                    tokens.Add(id);
                }
                else
                {
                    tokens.AddRange(Encoding.UTF8.GetBytes(cp).Select(b => b + 3));
                }
            }

            while (true)
            {
                float best = float.NegativeInfinity;
                int bestId = -1, bestIndex = -1;
                for (int i = 0; i < tokens.Count - 1; i++)
                {
                    if (_lookup.TryGetValue(_vocab[tokens[i]] + _vocab[tokens[i + 1]], out int id) && _scores[id] > best)
                    {
                        best = _scores[id];
                        bestId = id;
                        bestIndex = i;
                    }
                }

                if (bestIndex < 0)
                {
                    return tokens;
                }

                tokens[bestIndex] = bestId;
                tokens.RemoveAt(bestIndex + 1);
            }
        }
    }

    /// <summary>Textbook BPE: repeatedly merge the adjacent pair with the lowest merge rank.</summary>
    private sealed class RankBpe
    {
        private readonly Dictionary<string, int> _vocab = new(StringComparer.Ordinal);
        private readonly Dictionary<(string, string), int> _ranks = [];

        public static RankBpe Load(string path)
        {
            using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(path));
            JsonElement model = doc.RootElement.GetProperty("model");
            var bpe = new RankBpe();
            foreach (JsonProperty p in model.GetProperty("vocab").EnumerateObject())
            {
                bpe._vocab[p.Name] = p.Value.GetInt32();
            }

            int rank = 0;
            foreach (JsonElement m in model.GetProperty("merges").EnumerateArray())
            {
                (string, string) pair = m.ValueKind == JsonValueKind.Array
                    ? (m[0].GetString()!, m[1].GetString()!)
                    : (m.GetString()!.Split(' ')[0], m.GetString()!.Split(' ')[1]);
                bpe._ranks.TryAdd(pair, rank++);
            }

            return bpe;
        }

        public static string[] Gpt2ByteAlphabet()
        {
            var printable = new List<int>();
            printable.AddRange(Enumerable.Range('!', '~' - '!' + 1));
            printable.AddRange(Enumerable.Range('¡', '¬' - '¡' + 1));
            printable.AddRange(Enumerable.Range('®', 'ÿ' - '®' + 1));
            var result = new string[256];
            int next = 0;
            for (int b = 0; b < 256; b++)
            {
                result[b] = printable.Contains(b) ? ((char)b).ToString() : ((char)(256 + next++)).ToString();
            }

            return result;
        }

        public List<int> EncodeWord(string word, bool byteFallback)
        {
            var parts = new List<string>();
            for (int i = 0; i < word.Length; i += char.IsSurrogatePair(word, i) ? 2 : 1)
            {
                parts.Add(char.IsSurrogatePair(word, i) ? word.Substring(i, 2) : word[i].ToString());
            }

            while (true)
            {
                int bestRank = int.MaxValue, bestIndex = -1;
                for (int i = 0; i < parts.Count - 1; i++)
                {
                    if (_ranks.TryGetValue((parts[i], parts[i + 1]), out int r) && r < bestRank)
                    {
                        bestRank = r;
                        bestIndex = i;
                    }
                }

                if (bestIndex < 0)
                {
                    break;
                }

                parts[bestIndex] += parts[bestIndex + 1];
                parts.RemoveAt(bestIndex + 1);
            }

            var ids = new List<int>();
            foreach (string p in parts)
            {
                if (_vocab.TryGetValue(p, out int id))
                {
                    ids.Add(id);
                }
                else if (byteFallback)
                {
                    ids.AddRange(Encoding.UTF8.GetBytes(p).Select(b => _vocab[$"<0x{b:X2}>"]));
                }
                else
                {
                    throw new InvalidOperationException($"'{p}' is not in the vocabulary.");
                }
            }

            return ids;
        }
    }
}
