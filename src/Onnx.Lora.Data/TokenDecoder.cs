using System.Text;
using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>
/// The <c>decoder</c> section of a Hugging Face <c>tokenizer.json</c>: turns token strings back into text the way the
/// tokenizers library does (a chain of steps over the list of token strings). Supported steps: ByteLevel, Metaspace,
/// Replace (string pattern), ByteFallback, Fuse, Strip, and Sequence of those.
/// </summary>
/// <remarks>
/// Without it, Llama tokenizers decode to raw <c>▁</c> and <c>&lt;0x0A&gt;</c> pieces. Each step follows
/// tokenizers/src/decoders: ByteFallback turns runs of <c>&lt;0xNN&gt;</c> tokens into their UTF-8 text (U+FFFD per
/// byte when invalid), Strip removes up to <c>start</c>/<c>stop</c> copies of <c>content</c> from each token's ends,
/// Metaspace replaces its replacement char by a space and drops the first token's leading space when it added one.
/// </remarks>
public sealed class TokenDecoder
{
    private static readonly Dictionary<char, byte> s_byteLevelChars = BuildByteLevelMap();
    private readonly List<Func<List<string>, List<string>>> _steps;

    private TokenDecoder(List<Func<List<string>, List<string>>> steps) => _steps = steps;

    /// <summary>Reads the <c>decoder</c> element; null when it is JSON null.</summary>
    /// <exception cref="DataException">A step type or field is not supported; the message names the tokenizer.</exception>
    public static TokenDecoder? Read(string path, JsonElement decoder)
    {
        if (decoder.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        var steps = new List<Func<List<string>, List<string>>>();
        AddSteps(path, decoder, steps);
        return new TokenDecoder(steps);
    }

    /// <summary>The text of <paramref name="tokens"/> (vocabulary strings, in order).</summary>
    public string Decode(IEnumerable<string> tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        List<string> pieces = [.. tokens];
        foreach (Func<List<string>, List<string>> step in _steps)
        {
            pieces = step(pieces);
        }

        return string.Concat(pieces);
    }

    private static void AddSteps(string path, JsonElement d, List<Func<List<string>, List<string>>> steps)
    {
        string type = d.TryGetProperty("type", out JsonElement t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
        switch (type)
        {
            case "Sequence":
                foreach (JsonElement inner in d.GetProperty("decoders").EnumerateArray())
                {
                    AddSteps(path, inner, steps);
                }

                break;
            case "ByteLevel":
                steps.Add(ByteLevel);
                break;
            case "Metaspace":
                string replacement = d.TryGetProperty("replacement", out JsonElement r) && r.ValueKind == JsonValueKind.String ? r.GetString()! : "\u2581";
                bool prefix = PrependsSpace(d);
                steps.Add(tokens => tokens.Select((s, i) =>
                {
                    string text = s.Replace(replacement, " ", StringComparison.Ordinal);
                    return i == 0 && prefix && text.StartsWith(' ') ? text[1..] : text;
                }).ToList());
                break;
            case "Replace":
                string pattern = d.TryGetProperty("pattern", out JsonElement p) && p.TryGetProperty("String", out JsonElement ps) && ps.ValueKind == JsonValueKind.String
                    ? ps.GetString()!
                    : throw new DataException($"Tokenizer '{path}': decoder Replace is supported with a String pattern only.");
                string content = d.TryGetProperty("content", out JsonElement c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : "";
                steps.Add(tokens => tokens.Select(s => pattern.Length == 0 ? s : s.Replace(pattern, content, StringComparison.Ordinal)).ToList());
                break;
            case "ByteFallback":
                steps.Add(ByteFallback);
                break;
            case "Fuse":
                steps.Add(tokens => [string.Concat(tokens)]);
                break;
            case "Strip":
                string strip = d.TryGetProperty("content", out JsonElement sc) && sc.ValueKind == JsonValueKind.String ? sc.GetString()! : " ";
                int start = d.TryGetProperty("start", out JsonElement st) && st.TryGetInt32(out int a) ? a : 0;
                int stop = d.TryGetProperty("stop", out JsonElement sp) && sp.TryGetInt32(out int b) ? b : 0;
                steps.Add(tokens => tokens.Select(s => Strip(s, strip, start, stop)).ToList());
                break;
            default:
                throw new DataException($"Tokenizer '{path}': decoder '{type}' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence).");
        }
    }

    // Older files say add_prefix_space: true; newer ones prepend_scheme "always" / "first" (both add one to the first word).
    private static bool PrependsSpace(JsonElement d) =>
        d.TryGetProperty("prepend_scheme", out JsonElement s) && s.ValueKind == JsonValueKind.String
            ? s.GetString() is "always" or "first"
            : !d.TryGetProperty("add_prefix_space", out JsonElement a) || a.ValueKind != JsonValueKind.False;

    private static string Strip(string s, string content, int start, int stop)
    {
        if (content.Length == 0)
        {
            return s;
        }

        int from = 0;
        for (int i = 0; i < start && s.AsSpan(from).StartsWith(content, StringComparison.Ordinal); i++)
        {
            from += content.Length;
        }

        int to = s.Length;
        for (int i = 0; i < stop && to - content.Length >= from && s.AsSpan(from, to - from).EndsWith(content, StringComparison.Ordinal); i++)
        {
            to -= content.Length;
        }

        return s[from..to];
    }

    private static List<string> ByteLevel(List<string> tokens)
    {
        var bytes = new List<byte>();
        var text = new StringBuilder();
        foreach (char ch in string.Concat(tokens))
        {
            if (s_byteLevelChars.TryGetValue(ch, out byte value))
            {
                bytes.Add(value);
            }
            else
            {
                // A char outside GPT-2's byte alphabet (an added token's text) is kept as it is.
                bytes.AddRange(Encoding.UTF8.GetBytes(ch.ToString()));
            }
        }

        text.Append(Encoding.UTF8.GetString([.. bytes]));
        return [text.ToString()];
    }

    private static List<string> ByteFallback(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var pending = new List<byte>();
        void FlushBytes()
        {
            if (pending.Count > 0)
            {
                result.Add(new UTF8Encoding(false, false).GetString([.. pending]));
                pending.Clear();
            }
        }

        foreach (string token in tokens)
        {
            if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
                && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out byte b))
            {
                pending.Add(b);
                continue;
            }

            FlushBytes();
            result.Add(token);
        }

        FlushBytes();
        return result;
    }

    // GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards, in byte order.
    private static Dictionary<char, byte> BuildByteLevelMap()
    {
        var map = new Dictionary<char, byte>();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[printable ? (char)b : (char)(256 + next++)] = (byte)b;
        }

        return map;
    }
}
