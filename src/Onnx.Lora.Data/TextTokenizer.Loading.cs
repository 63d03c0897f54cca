using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Tokenizers;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Data;

// Loading: a SentencePiece .model or a tokenizer.json, then the special tokens of tokenizer_config.json /
// special_tokens_map.json beside it.
public sealed partial class TextTokenizer
{
    // The largest real tokenizer.json files are tens of MB (Gemma's ~34 MB); a file far beyond is not a tokenizer, and
    // its size is checked before a byte is read (a device like /dev/zero is refused outright).
    private const long MaxTokenizerBytes = 1L << 30;

    private static TextTokenizer LoadSentencePiece(string path)
    {
        SentencePieceTokenizer sp;
        try
        {
            using FileStream stream = InputFile.OpenRead(path, "SentencePiece model", MaxTokenizerBytes, m => new DataException(m));
            sp = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not DataException and not OutOfMemoryException)
        {
            throw new DataException($"Cannot load SentencePiece model '{path}': {e.Message}", e);
        }

        var idToToken = new Dictionary<int, string>();
        foreach ((string token, int id) in sp.Vocabulary)
        {
            idToToken[id] = token;
        }

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (sp.SpecialTokens is not null)
        {
            foreach ((string token, int id) in sp.SpecialTokens)
            {
                added[token] = id;
            }
        }

        // Control tokens are not plain text pieces in SentencePiece; recognise BOS/EOS written in text (chat templates).
        added.TryAdd(sp.BeginningOfSentenceToken, sp.BeginningOfSentenceId);
        added.TryAdd(sp.EndOfSentenceToken, sp.EndOfSentenceId);
        idToToken.TryAdd(sp.BeginningOfSentenceId, sp.BeginningOfSentenceToken);
        idToToken.TryAdd(sp.EndOfSentenceId, sp.EndOfSentenceToken);
        return new TextTokenizer(path, sp, sentencePiece: true, [], added, sp.UnknownId, null, idToToken)
        {
            BosId = sp.BeginningOfSentenceId,
            EosId = sp.EndOfSentenceId,
            BosToken = sp.BeginningOfSentenceToken,
            EosToken = sp.EndOfSentenceToken,
            PadId = sp.EndOfSentenceId,
            AddBos = true,
        };
    }

    private static TextTokenizer LoadHuggingFace(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(InputFile.ReadAllBytes(path, "Tokenizer", MaxTokenizerBytes, m => new DataException(m)));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new DataException($"Cannot read tokenizer '{path}': {e.Message}", e);
        }

        using (doc)
        {
            JsonElement root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out JsonElement model) || model.ValueKind != JsonValueKind.Object)
            {
                throw new DataException($"Tokenizer '{path}' has no \"model\" object (not a Hugging Face tokenizer.json).");
            }

            string type = model.TryGetProperty("type", out JsonElement t) ? t.GetString() ?? "" : "BPE";
            if (type != "BPE")
            {
                throw new DataException($"Tokenizer '{path}': model type '{type}' is not supported (only BPE tokenizer.json files are; use a SentencePiece .model for Unigram models).");
            }

            var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
            if (!model.TryGetProperty("vocab", out JsonElement vocabJson) || vocabJson.ValueKind != JsonValueKind.Object)
            {
                throw new DataException($"Tokenizer '{path}': model.vocab is missing or not an object of token → id.");
            }

            foreach (JsonProperty p in vocabJson.EnumerateObject())
            {
                vocab[p.Name] = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int id) && id is >= 0 and < MaxTokenId
                    ? id
                    : throw new DataException($"Tokenizer '{path}': model.vocab['{p.Name}'] is {p.Value}; expected an integer id in [0, {MaxTokenId}).");
            }

            var merges = new List<string>();
            if (model.TryGetProperty("merges", out JsonElement m))
            {
                int index = 0;
                foreach (JsonElement merge in m.EnumerateArray())
                {
                    merges.Add(merge.ValueKind switch
                    {
                        JsonValueKind.Array when merge.GetArrayLength() == 2 && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String
                            => merge[0].GetString() + " " + merge[1].GetString(),
                        JsonValueKind.String => merge.GetString()!,
                        _ => throw new DataException($"Tokenizer '{path}': model.merges[{index}] is {merge}; expected \"a b\" or [\"a\", \"b\"]."),
                    });
                    index++;
                }
            }

            var added = new Dictionary<string, int>(StringComparer.Ordinal);
            if (root.TryGetProperty("added_tokens", out JsonElement addedTokens))
            {
                int index = 0;
                foreach (JsonElement a in addedTokens.EnumerateArray())
                {
                    if (a.ValueKind != JsonValueKind.Object
                        || !a.TryGetProperty("content", out JsonElement content) || content.ValueKind != JsonValueKind.String
                        || !a.TryGetProperty("id", out JsonElement idJson) || idJson.ValueKind != JsonValueKind.Number || !idJson.TryGetInt32(out int addedId) || addedId is < 0 or >= MaxTokenId)
                    {
                        throw new DataException($"Tokenizer '{path}': added_tokens[{index}] needs \"content\" (string) and \"id\" (an integer in [0, {MaxTokenId})).");
                    }

                    string text = content.GetString()!;
                    // An empty token would be found at every position of every text: Encode would never advance.
                    added[text.Length > 0 ? text : throw new DataException($"Tokenizer '{path}': added_tokens[{index}] has empty \"content\".")] = addedId;
                    index++;
                }
            }

            var normalizers = new List<Func<string, (string, int[])>>();
            if (root.TryGetProperty("normalizer", out JsonElement norm))
            {
                TokenizerJsonPipeline.AddNormalizers(path, norm, normalizers);
            }

            bool byteLevel = false;
            // BpeTokenizer falls back to a word splitter when given no pre-tokenizer; HF's "none" means one piece.
            PreTokenizer? preTokenizer = TokenizerJsonPipeline.WholeText;
            if (root.TryGetProperty("pre_tokenizer", out JsonElement pre))
            {
                preTokenizer = TokenizerJsonPipeline.ReadPreTokenizer(path, pre, normalizers, ref byteLevel);
            }

            string? unk = model.TryGetProperty("unk_token", out JsonElement u) && u.ValueKind == JsonValueKind.String ? u.GetString() : null;
            bool byteFallback = model.TryGetProperty("byte_fallback", out JsonElement bf) && bf.ValueKind == JsonValueKind.True;
            var options = new BpeOptions(vocab)
            {
                Merges = merges,
                PreTokenizer = preTokenizer,
                UnknownToken = unk,
                FuseUnknownTokens = false,
                ByteLevel = byteLevel,
                ContinuingSubwordPrefix = OptionalString(model, "continuing_subword_prefix"),
                EndOfWordSuffix = OptionalString(model, "end_of_word_suffix"),
            };

            BpeTokenizer bpe;
            try
            {
                bpe = BpeTokenizer.Create(options);
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
            {
                throw new DataException($"Tokenizer '{path}': Microsoft.ML.Tokenizers rejected the BPE model: {e.Message}", e);
            }

            var idToToken = new Dictionary<int, string>();
            foreach ((string token, int id) in vocab)
            {
                idToToken[id] = token;
            }

            foreach ((string token, int id) in added)
            {
                idToToken[id] = token;
            }

            int[]? fallback = null;
            if (byteFallback)
            {
                fallback = new int[256];
                for (int b = 0; b < 256; b++)
                {
                    string name = string.Create(CultureInfo.InvariantCulture, $"<0x{b:X2}>");
                    fallback[b] = vocab.TryGetValue(name, out int id) ? id
                        : throw new DataException($"Tokenizer '{path}' declares byte_fallback but its vocabulary has no '{name}'.");
                }
            }

            int? unkId = unk is not null && vocab.TryGetValue(unk, out int ui) ? ui : null;
            var tokenizer = new TextTokenizer(path, bpe, sentencePiece: false, normalizers, added, unkId, fallback, idToToken)
            {
                _decoder = root.TryGetProperty("decoder", out JsonElement decoder) ? TokenDecoder.Read(path, decoder) : null,
            };
            tokenizer.ReadPostProcessor(root);
            return tokenizer;
        }
    }

    private static string? OptionalString(JsonElement e, string name) =>
        e.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0 ? v.GetString() : null;

    private void ReadPostProcessor(JsonElement root)
    {
        // TemplateProcessing "single": [SpecialToken <s>, Sequence A, (SpecialToken </s>)] tells whether BOS/EOS are added.
        if (root.TryGetProperty("post_processor", out JsonElement post) && post.ValueKind == JsonValueKind.Object
            && post.TryGetProperty("type", out JsonElement type) && type.GetString() == "TemplateProcessing"
            && post.TryGetProperty("single", out JsonElement single))
        {
            JsonElement[] items = single.EnumerateArray().ToArray();
            AddBos = items.Length > 0 && items[0].TryGetProperty("SpecialToken", out _);
            AddEos = items.Length > 1 && items[^1].TryGetProperty("SpecialToken", out _);
        }
    }

    private void ApplyConfig(string folder)
    {
        string configPath = Path.Combine(folder, "tokenizer_config.json");
        string mapPath = Path.Combine(folder, "special_tokens_map.json");
        JsonElement? config = ReadJsonFile(configPath);
        JsonElement? map = ReadJsonFile(mapPath);
        string? Token(string key) => TokenString(config, key) ?? TokenString(map, key);

        if (Token("bos_token") is string bos)
        {
            BosToken = bos;
            BosId = IdOf(bos, configPath, "bos_token");
        }

        if (Token("eos_token") is string eos)
        {
            EosToken = eos;
            EosId = IdOf(eos, configPath, "eos_token");
        }

        PadId = Token("pad_token") is string pad ? IdOf(pad, configPath, "pad_token") : EosId ?? PadId;
        if (config is JsonElement c)
        {
            if (c.TryGetProperty("add_bos_token", out JsonElement ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                AddBos = ab.GetBoolean();
            }

            if (c.TryGetProperty("add_eos_token", out JsonElement ae) && ae.ValueKind is JsonValueKind.True or JsonValueKind.False)
            {
                AddEos = ae.GetBoolean();
            }

            if (c.TryGetProperty("chat_template", out JsonElement ct) && ct.ValueKind == JsonValueKind.String)
            {
                ChatTemplate = ct.GetString();
            }
        }
    }

    private int IdOf(string token, string file, string key)
    {
        if (_addedTokenIds.TryGetValue(token, out int id))
        {
            return id;
        }

        foreach ((int i, string t) in _idToToken)
        {
            if (t == token)
            {
                return i;
            }
        }

        throw new DataException($"'{file}': {key} '{token}' is not a token of '{Source}'.");
    }

    private static JsonElement? ReadJsonFile(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        try
        {
            using JsonDocument doc = JsonDocument.Parse(InputFile.ReadAllBytes(path, "Tokenizer config", MaxTokenizerBytes, m => new DataException(m)));
            return doc.RootElement.ValueKind == JsonValueKind.Object
                ? doc.RootElement.Clone()
                : throw new DataException($"'{path}' is a JSON {doc.RootElement.ValueKind}; expected an object.");
        }
        catch (JsonException e)
        {
            throw new DataException($"'{path}' is not valid JSON: {e.Message}", e);
        }
    }

    private static string? TokenString(JsonElement? e, string key)
    {
        if (e is not JsonElement obj || !obj.TryGetProperty(key, out JsonElement v))
        {
            return null;
        }

        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out JsonElement c) => c.GetString(),
            _ => null,
        };
    }
}
