using Onnx.Lora.Data;

namespace Onnx.Lora.Generation;

/// <summary>
/// Turns a growing id list into text pieces: decodes the whole list and hands out what is new, holding back while the
/// text ends in an incomplete byte sequence (U+FFFD) — decoding tokens one by one would drop SentencePiece's leading
/// spaces and split multi-byte characters.
/// </summary>
internal sealed class StreamingDecoder(TextTokenizer tokenizer, List<int> ids)
{
    private readonly string _prompt = tokenizer.Decode(ids);
    private string _shown = tokenizer.Decode(ids);

    public string Continuation => _shown.StartsWith(_prompt, StringComparison.Ordinal) ? _shown[_prompt.Length..] : _shown;

    public string Add(int token)
    {
        ids.Add(token);
        string text = tokenizer.Decode(ids);
        return text.EndsWith('\uFFFD') ? "" : Advance(text);
    }

    public string Flush() => Advance(tokenizer.Decode(ids));

    private string Advance(string text)
    {
        if (!text.StartsWith(_shown, StringComparison.Ordinal))
        {
            // Decoding revised earlier text (rare, e.g. a byte sequence resolved differently): nothing safe to add.
            return "";
        }

        string piece = text[_shown.Length..];
        _shown = text;
        return piece;
    }
}
