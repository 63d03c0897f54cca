using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// The one stderr line of an error: messages quote what the user's files contain (tensor names, external-data
/// locations, JSON values), and a hostile file can make those megabytes long or fill them with control characters.
/// Every error line goes through <see cref="OneLine"/>, so no reader has to remember to shorten its quotes.
/// </summary>
internal static partial class MessageText
{
    /// <summary>Longest quoted item kept whole; longer ones keep their start and end.</summary>
    public const int MaxQuoted = 200;

    /// <summary>Longest line written; the rest is cut with its length said.</summary>
    public const int MaxLine = 2_000;

    /// <summary>One line: line breaks become spaces, control characters are escaped, long quoted items and the line itself abbreviated.</summary>
    public static string OneLine(string message)
    {
        ArgumentNullException.ThrowIfNull(message);
        string text = Escape(message.ReplaceLineEndings(" "));
        text = Quoted().Replace(text, m => string.Create(CultureInfo.InvariantCulture, $"'{Shorten(m.Groups[1].Value, MaxQuoted)}' ({m.Groups[1].Length:N0} chars)"));
        return Abbreviate(text, MaxLine);
    }

    /// <summary><paramref name="text"/> itself when short, else its start, "…", its end and the full length.</summary>
    public static string Abbreviate(string text, int max)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Length <= max)
        {
            return text;
        }

        return string.Create(CultureInfo.InvariantCulture, $"{Shorten(text, max)} ({text.Length:N0} chars)");
    }

    // Start and end of a text longer than `max`, around an ellipsis.
    private static string Shorten(string text, int max)
    {
        int tail = max / 5, head = max - tail;
        return text[..head] + "…" + text[^tail..];
    }

    private static string Escape(string text)
    {
        if (!text.Any(char.IsControl))
        {
            return text;
        }

        var sb = new StringBuilder(text.Length + 16);
        foreach (char c in text)
        {
            sb.Append(char.IsControl(c) ? string.Create(CultureInfo.InvariantCulture, $"\\x{(int)c:X2}") : c);
        }

        return sb.ToString();
    }

    [GeneratedRegex("'([^']{201,})'")]
    private static partial Regex Quoted();
}
