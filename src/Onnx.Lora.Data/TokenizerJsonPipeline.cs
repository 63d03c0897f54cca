using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Onnx.Lora.Data;

/// <summary>
/// Translates tokenizer.json's normalizer and pre-tokenizer sections into what <see cref="BpeTokenizer"/> takes:
/// normalizers as functions returning the new text and, per char, its source index; a regex pre-tokenizer.
/// Anything unsupported is refused with a <see cref="DataException"/> naming the construct.
/// </summary>
internal static class TokenizerJsonPipeline
{
    /// <summary>Appends the normalizers of tokenizer.json's "normalizer" section <paramref name="n"/>, each returning its text and a map to source chars.</summary>
    internal static void AddNormalizers(string path, JsonElement n, List<Func<string, (string, int[])>> result)
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

    /// <summary>The pre-tokenizer of section <paramref name="p"/>; Metaspace and ByteLevel prefixes become normalizers, ByteLevel sets <paramref name="byteLevel"/>.</summary>
    internal static PreTokenizer ReadPreTokenizer(string path, JsonElement p, List<Func<string, (string, int[])>> normalizers, ref bool byteLevel)
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

    /// <summary>The pre-tokenizer that keeps the whole text one piece (HF's "no pre-tokenizer").</summary>
    internal static PreTokenizer WholeText => s_wholeText;

    private static readonly RegexPreTokenizer s_wholeText = new(new Regex(@"[\s\S]+", RegexOptions.CultureInvariant), null);

    // GPT-2's split pattern (the one HF's ByteLevel pre-tokenizer uses with use_regex).
    private static readonly Regex s_gpt2Split = new(
        @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant | RegexOptions.Compiled);
}
