using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Data;

/// <summary>
/// The tokenizer the trainer uses: a SentencePiece <c>.model</c> (through Microsoft.ML.Tokenizers'
/// <see cref="LlamaTokenizer"/>) or a Hugging Face <c>tokenizer.json</c> BPE model (through
/// <see cref="BpeTokenizer"/>, with our glue for what it lacks: normalizer sequences, Metaspace, byte fallback,
/// added/special tokens split out before normalization as HF does). Special token ids come from
/// tokenizer_config.json / special_tokens_map.json beside the tokenizer when present.
/// </summary>
/// <remarks>
/// Supported tokenizer.json pieces: model BPE (merges as "a b" strings or [a, b] pairs, unk_token, byte_fallback,
/// continuing_subword_prefix, end_of_word_suffix; ignore_merges is read but not honoured — BpeTokenizer always
/// merges, which differs only for words that are whole vocabulary entries with a different merge path);
/// normalizers null/Sequence/Prepend/Replace(String)/NFC/NFKC/NFD/NFKD/Lowercase; pre-tokenizers
/// null/ByteLevel/Metaspace/Split (Isolated regex, as Llama-3 and Qwen2 use)/Sequence of those. Anything else is refused with a <see cref="DataException"/> that
/// names the construct. Offsets returned by <see cref="Encode(string, List{int}, List{int})"/> are char positions in the caller's text; with
/// a normalizer that changes lengths (NFKC of ligatures) they are approximate at those characters.
/// </remarks>
public sealed class TextTokenizer
{
    /// <summary>Ids at or above this are refused: no real vocabulary is near it, and VocabSize (max id + 1) must not overflow.</summary>
    private const int MaxTokenId = 1 << 24;

    private readonly Tokenizer _inner;
    private readonly bool _sentencePiece;
    private readonly List<Func<string, (string Text, int[] Map)>> _normalizers;
    private readonly string[] _addedTokens;
    private readonly Dictionary<string, int> _addedTokenIds;
    private readonly int? _unknownId;
    private readonly int[]? _byteFallbackIds;
    private readonly Dictionary<int, string> _idToToken;

    // tokenizer.json's own decoder section; without it Llama vocabularies decode to raw '▁' and '<0x0A>' pieces.
    private TokenDecoder? _decoder;

    private TextTokenizer(
        string source, Tokenizer inner, bool sentencePiece, List<Func<string, (string, int[])>> normalizers,
        Dictionary<string, int> addedTokens, int? unknownId, int[]? byteFallbackIds, Dictionary<int, string> idToToken)
    {
        Source = source;
        _inner = inner;
        _sentencePiece = sentencePiece;
        _normalizers = normalizers;
        _addedTokenIds = addedTokens;
        _addedTokens = addedTokens.Keys.OrderByDescending(t => t.Length).ThenBy(t => t, StringComparer.Ordinal).ToArray();
        _unknownId = unknownId;
        _byteFallbackIds = byteFallbackIds;
        _idToToken = idToToken;
        VocabSize = idToToken.Count == 0 ? 0 : idToToken.Keys.Max() + 1;
        MaxTokenChars = Math.Max(1, idToToken.Values.Select(t => t.Length).DefaultIfEmpty(1).Max());
    }

    /// <summary>The file the tokenizer was loaded from.</summary>
    public string Source { get; }

    /// <summary>Number of ids (max id + 1, added tokens included); must not exceed the model's embedding rows.</summary>
    public int VocabSize { get; }

    /// <summary>
    /// Length in chars of the longest vocabulary entry (added tokens included): a bound on the text one token covers,
    /// used to refuse texts that cannot fit a sequence length before tokenizing them.
    /// </summary>
    public int MaxTokenChars { get; }

    /// <summary>Beginning-of-sequence id, if the tokenizer has one.</summary>
    public int? BosId { get; private set; }

    /// <summary>End-of-sequence id, if the tokenizer has one.</summary>
    public int? EosId { get; private set; }

    /// <summary>Padding id (pad_token, else EOS, else 0). Padded positions are masked, so its value never trains.</summary>
    public int PadId { get; private set; }

    /// <summary>BOS token text (for chat templates), if any.</summary>
    public string? BosToken { get; private set; }

    /// <summary>EOS token text (for chat templates), if any.</summary>
    public string? EosToken { get; private set; }

    /// <summary>Whether a sequence starts with BOS (tokenizer_config add_bos_token; SentencePiece/Llama default true).</summary>
    public bool AddBos { get; private set; }

    /// <summary>Whether a sequence ends with EOS (tokenizer_config add_eos_token; default false).</summary>
    public bool AddEos { get; private set; }

    /// <summary>The Jinja chat template from tokenizer_config.json, if any.</summary>
    public string? ChatTemplate { get; private set; }

    /// <summary>
    /// Loads a tokenizer: a <c>.model</c> SentencePiece file, a <c>tokenizer.json</c>, or a folder holding
    /// tokenizer.json (preferred) or tokenizer.model.
    /// </summary>
    /// <exception cref="DataException">The file is missing, unreadable, or uses a construct we do not support (named).</exception>
    public static TextTokenizer Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Directory.Exists(path))
        {
            string json = Path.Combine(path, "tokenizer.json");
            string model = Path.Combine(path, "tokenizer.model");
            path = File.Exists(json) ? json : File.Exists(model) ? model
                : throw new DataException($"Tokenizer folder '{path}' holds neither tokenizer.json nor tokenizer.model.");
        }

        if (!File.Exists(path))
        {
            throw new DataException($"Tokenizer file '{path}' does not exist.");
        }

        try
        {
            TextTokenizer tokenizer = path.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? LoadHuggingFace(path) : LoadSentencePiece(path);
            tokenizer.ApplyConfig(Path.GetDirectoryName(Path.GetFullPath(path))!);
            return tokenizer;
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or IndexOutOfRangeException or ArgumentException or IOException or UnauthorizedAccessException)
        {
            // A field of the wrong JSON type or shape (a number where a string belongs, a merge that is not a pair...).
            throw new DataException($"Tokenizer '{path}' (or its tokenizer_config.json / special_tokens_map.json) is malformed: {e.Message}", e);
        }
    }

    /// <summary>
    /// Tokenizes <paramref name="text"/> without adding BOS/EOS (the caller decides). Special tokens written in the
    /// text (e.g. <c>&lt;s&gt;</c> rendered by a chat template) become their ids.
    /// </summary>
    /// <param name="text">Text to tokenize.</param>
    /// <param name="ids">Receives the ids (appended).</param>
    /// <param name="offsets">Receives, per id, the char index in <paramref name="text"/> where the token starts (appended), or null.</param>
    /// <exception cref="DataException">A character cannot be represented (no unk token and no byte fallback).</exception>
    public void Encode(string text, List<int> ids, List<int>? offsets = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(ids);
        int pos = 0;
        while (pos < text.Length)
        {
            (int at, string? special) = FindNextAddedToken(text, pos);
            if (at > pos)
            {
                EncodeOrdinary(text, pos, at - pos, ids, offsets);
            }

            if (special is null)
            {
                break;
            }

            ids.Add(_addedTokenIds[special]);
            offsets?.Add(at);
            pos = at + special.Length;
        }
    }

    /// <summary>Tokenizes <paramref name="text"/> into a new list (no BOS/EOS).</summary>
    public List<int> Encode(string text)
    {
        var ids = new List<int>();
        Encode(text, ids);
        return ids;
    }

    /// <summary>Text of a token id (its vocabulary entry), or null for an unknown id.</summary>
    public string? TokenText(int id) => _idToToken.TryGetValue(id, out string? t) ? t : null;

    /// <summary>Decodes ids to text (special tokens dropped).</summary>
    public string Decode(IEnumerable<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        int[] filtered = ids.Where(i => !_addedTokenIds.ContainsValue(i)).ToArray();
        if (_decoder is not null)
        {
            return _decoder.Decode(filtered.Select(i => _idToToken.TryGetValue(i, out string? t) ? t : ""));
        }

        return _inner.Decode(filtered) ?? "";
    }

    private (int At, string? Token) FindNextAddedToken(string text, int start)
    {
        int best = -1;
        string? bestToken = null;
        foreach (string t in _addedTokens)
        {
            int i = text.IndexOf(t, start, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best))
            {
                best = i;
                bestToken = t;
            }
        }

        return best < 0 ? (text.Length, null) : (best, bestToken);
    }

    private void EncodeOrdinary(string text, int start, int length, List<int> ids, List<int>? offsets)
    {
        string segment = text.Substring(start, length);
        if (_sentencePiece)
        {
            IReadOnlyList<EncodedToken> tokens = ((SentencePieceTokenizer)_inner).EncodeToTokens(
                segment, out string? normalized, addBeginningOfSentence: false, addEndOfSentence: false);
            // Offsets refer to the normalized text; SentencePiece's dummy prefix adds chars at the front only.
            int shift = normalized is null ? 0 : normalized.Length - segment.Length;
            foreach (EncodedToken t in tokens)
            {
                ids.Add(t.Id);
                offsets?.Add(start + Math.Clamp(t.Offset.Start.Value - shift, 0, Math.Max(0, segment.Length - 1)));
            }

            return;
        }

        string current = segment;
        int[] map = Enumerable.Range(0, segment.Length + 1).ToArray();
        foreach (Func<string, (string Text, int[] Map)> normalize in _normalizers)
        {
            (string next, int[] stepMap) = normalize(current);
            int[] composed = new int[stepMap.Length];
            for (int i = 0; i < stepMap.Length; i++)
            {
                composed[i] = map[stepMap[i]];
            }

            current = next;
            map = composed;
        }

        IReadOnlyList<EncodedToken> encoded;
        try
        {
            encoded = _inner.EncodeToTokens(current, out _, considerPreTokenization: true, considerNormalization: false);
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new DataException($"Tokenizer '{Source}': the pre-tokenizer regex '{e.Pattern}' took over {e.MatchTimeout.TotalMilliseconds} ms on a {current.Length}-char text (a pathological pattern).", e);
        }
        int covered = 0;
        foreach (EncodedToken t in encoded)
        {
            (int tokenStart, int tokenLength) = t.Offset.GetOffsetAndLength(current.Length);
            if (tokenStart > covered)
            {
                throw Unrepresentable(current, covered);
            }

            covered = Math.Max(covered, tokenStart + tokenLength);
            if (_unknownId is int unk && t.Id == unk && _byteFallbackIds is not null)
            {
                foreach (byte b in Encoding.UTF8.GetBytes(current.Substring(tokenStart, tokenLength)))
                {
                    ids.Add(_byteFallbackIds[b]);
                    offsets?.Add(start + map[tokenStart]);
                }

                continue;
            }

            ids.Add(t.Id);
            offsets?.Add(start + Math.Min(map[tokenStart], length - 1));
        }

        if (covered < current.Length)
        {
            throw Unrepresentable(current, covered);
        }
    }

    private DataException Unrepresentable(string text, int index) =>
        new($"Tokenizer '{Source}' cannot represent the character '{text[index]}' (U+{(int)text[index]:X4}): it is not in the vocabulary and the tokenizer has no unk token or byte fallback.");

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
                AddNormalizers(path, norm, normalizers);
            }

            bool byteLevel = false;
            // BpeTokenizer falls back to a word splitter when given no pre-tokenizer; HF's "none" means one piece.
            PreTokenizer? preTokenizer = s_wholeText;
            if (root.TryGetProperty("pre_tokenizer", out JsonElement pre))
            {
                preTokenizer = ReadPreTokenizer(path, pre, normalizers, ref byteLevel);
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

    private static void AddNormalizers(string path, JsonElement n, List<Func<string, (string, int[])>> result)
    {
        if (n.ValueKind == JsonValueKind.Null)
        {
            return;
        }

        string type = n.GetProperty("type").GetString()!;
        switch (type)
        {
            case "Sequence":
                foreach (JsonElement inner in n.GetProperty("normalizers").EnumerateArray())
                {
                    AddNormalizers(path, inner, result);
                }

                break;
            case "Prepend":
                string prefix = RequiredString(path, n, "prepend", "normalizer Prepend");
                result.Add(s => s.Length == 0 ? (s, [0]) : (prefix + s, [.. Enumerable.Repeat(0, prefix.Length), .. Enumerable.Range(0, s.Length + 1)]));
                break;
            case "Replace":
                if (!n.GetProperty("pattern").TryGetProperty("String", out JsonElement pattern))
                {
                    throw new DataException($"Tokenizer '{path}': normalizer Replace with a Regex pattern is not supported (only String patterns).");
                }

                string from = RequiredString(path, n.GetProperty("pattern"), "String", "normalizer Replace pattern");
                string to = RequiredString(path, n, "content", "normalizer Replace");
                result.Add(s => Replace(s, from, to));
                break;
            case "NFC" or "NFKC" or "NFD" or "NFKD":
                NormalizationForm form = type switch { "NFC" => NormalizationForm.FormC, "NFD" => NormalizationForm.FormD, "NFKC" => NormalizationForm.FormKC, _ => NormalizationForm.FormKD };
                result.Add(s => Approximate(s, s.Normalize(form)));
                break;
            case "Lowercase":
                result.Add(s => (s.ToLowerInvariant(), Enumerable.Range(0, s.Length + 1).ToArray()));
                break;
            default:
                throw new DataException($"Tokenizer '{path}': normalizer '{type}' is not supported (supported: Sequence, Prepend, Replace, NFC, NFKC, NFD, NFKD, Lowercase).");
        }
    }

    private static (string, int[]) Replace(string s, string from, string to)
    {
        if (from.Length == 0)
        {
            return (s, Enumerable.Range(0, s.Length + 1).ToArray());
        }

        var sb = new StringBuilder(s.Length);
        var map = new List<int>(s.Length + 1);
        int i = 0;
        while (i < s.Length)
        {
            if (string.CompareOrdinal(s, i, from, 0, from.Length) == 0)
            {
                sb.Append(to);
                map.AddRange(Enumerable.Repeat(i, to.Length));
                i += from.Length;
            }
            else
            {
                sb.Append(s[i]);
                map.Add(i);
                i++;
            }
        }

        map.Add(s.Length);
        return (sb.ToString(), map.ToArray());
    }

    private static (string, int[]) Approximate(string before, string after)
    {
        if (after.Length == before.Length)
        {
            return (after, Enumerable.Range(0, before.Length + 1).ToArray());
        }

        var map = new int[after.Length + 1];
        for (int i = 0; i <= after.Length; i++)
        {
            map[i] = (int)((long)i * before.Length / Math.Max(1, after.Length));
        }

        return (after, map);
    }

    private static PreTokenizer ReadPreTokenizer(string path, JsonElement p, List<Func<string, (string, int[])>> normalizers, ref bool byteLevel)
    {
        if (p.ValueKind == JsonValueKind.Null)
        {
            return s_wholeText;
        }

        string type = p.GetProperty("type").GetString()!;
        switch (type)
        {
            case "Sequence":
                PreTokenizer? last = s_wholeText;
                foreach (JsonElement inner in p.GetProperty("pretokenizers").EnumerateArray())
                {
                    PreTokenizer next = ReadPreTokenizer(path, inner, normalizers, ref byteLevel);
                last = ReferenceEquals(next, s_wholeText) ? last : next;
                }

                return last;
            case "ByteLevel":
                byteLevel = true;
                if (p.TryGetProperty("add_prefix_space", out JsonElement aps) && aps.ValueKind == JsonValueKind.True)
                {
                    normalizers.Add(s => s.Length > 0 && s[0] != ' ' ? (" " + s, [0, .. Enumerable.Range(0, s.Length + 1)]) : (s, Enumerable.Range(0, s.Length + 1).ToArray()));
                }

                bool useRegex = !p.TryGetProperty("use_regex", out JsonElement ur) || ur.ValueKind != JsonValueKind.False;
                return useRegex ? new RegexPreTokenizer(s_gpt2Split, null) : s_wholeText;
            case "Metaspace":
                string replacement = p.TryGetProperty("replacement", out _) ? RequiredString(path, p, "replacement", "pre-tokenizer Metaspace") : "\u2581";
                string scheme = p.TryGetProperty("prepend_scheme", out JsonElement ps) ? ps.GetString() ?? "always"
                    : p.TryGetProperty("add_prefix_space", out JsonElement ap) && ap.ValueKind == JsonValueKind.False ? "never" : "always";
                normalizers.Add(s => Replace(s, " ", replacement));
                if (scheme != "never")
                {
                    normalizers.Add(s => s.Length == 0 || s.StartsWith(replacement, StringComparison.Ordinal) ? (s, Enumerable.Range(0, s.Length + 1).ToArray())
                        : (replacement + s, [.. Enumerable.Repeat(0, replacement.Length), .. Enumerable.Range(0, s.Length + 1)]));
                }

                bool split = !p.TryGetProperty("split", out JsonElement sp) || sp.ValueKind != JsonValueKind.False;
                return split ? new RegexPreTokenizer(new Regex($"{Regex.Escape(replacement)}[^{Regex.Escape(replacement)}]*|[^{Regex.Escape(replacement)}]+", RegexOptions.CultureInvariant), null) : s_wholeText;
            case "Split":
                // Llama-3 / Qwen2 style: Split(Regex, Isolated) then ByteLevel(use_regex=false). Only "Isolated" with
                // a pattern that covers the text keeps every char; the encoder's coverage check catches the rest.
                string behavior = p.TryGetProperty("behavior", out JsonElement be) ? be.GetString() ?? "" : "";
                bool invert = p.TryGetProperty("invert", out JsonElement inv) && inv.ValueKind == JsonValueKind.True;
                if (behavior != "Isolated" || invert)
                {
                    throw new DataException($"Tokenizer '{path}': pre-tokenizer Split with behavior '{behavior}'{(invert ? " inverted" : "")} is not supported (only Isolated).");
                }

                JsonElement pat = p.GetProperty("pattern");
                Regex splitRegex = pat.TryGetProperty("Regex", out _)
                    ? new Regex(RequiredString(path, pat, "Regex", "pre-tokenizer Split pattern"), RegexOptions.CultureInvariant, s_regexTimeout)
                    : new Regex(Regex.Escape(RequiredString(path, pat, "String", "pre-tokenizer Split pattern")), RegexOptions.CultureInvariant, s_regexTimeout);
                if (splitRegex.IsMatch(string.Empty))
                {
                    // An empty match splits nowhere and never advances: the pre-tokenizer would loop forever.
                    throw new DataException($"Tokenizer '{path}': pre-tokenizer Split pattern '{splitRegex}' matches the empty string.");
                }

                return new RegexPreTokenizer(splitRegex, null);
            default:
                throw new DataException($"Tokenizer '{path}': pre-tokenizer '{type}' is not supported (supported: ByteLevel, Metaspace, Split (Isolated), Sequence).");
        }
    }

    // A Split regex comes from the tokenizer file: a pathological one ("(a+)+$") must fail, not hang, on some text.
    private static readonly TimeSpan s_regexTimeout = TimeSpan.FromMilliseconds(500);

    // Real values are one char ("▁", " ") or a regex of a few hundred: a longer one multiplies every text it touches
    // (a 1 Mi-char Replace content turned a 100-char text into gigabytes).
    private const int MaxPatternChars = 4096;

    private static string RequiredString(string path, JsonElement obj, string name, string what)
    {
        string value = obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()!
            : throw new DataException($"Tokenizer '{path}': {what} needs \"{name}\" as a string.");
        return value.Length <= MaxPatternChars ? value
            : throw new DataException($"Tokenizer '{path}': {what} \"{name}\" is {value.Length:N0} chars long; at most {MaxPatternChars:N0} are supported.");
    }

    private static readonly RegexPreTokenizer s_wholeText = new(new Regex(@"[\s\S]+", RegexOptions.CultureInvariant), null);

    // GPT-2's split pattern (the one HF's ByteLevel pre-tokenizer uses with use_regex).
    private static readonly Regex s_gpt2Split = new(
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant | RegexOptions.Compiled);

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
