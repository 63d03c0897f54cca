using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

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
public sealed partial class TextTokenizer
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
}
