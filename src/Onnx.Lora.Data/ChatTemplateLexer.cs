namespace Onnx.Lora.Data;

/// <summary>
/// Cuts a chat template into text, <c>{{ expr }}</c> and <c>{% stmt %}</c> parts (comments dropped), applying
/// whitespace control and HF's trim_blocks/lstrip_blocks to the text between them.
/// </summary>
internal static class ChatTemplateLexer
{
    /// <summary>The parts of <paramref name="src"/> in order: kind ("text", "expr", "stmt"), body, char offset.</summary>
    public static List<(string Kind, string Body, int Position)> Lex(string src)
    {
        var parts = new List<(string Kind, string Body, int Position)>();
        int pos = 0;
        var raw = new List<(string Kind, string Body, int Pos, bool TrimLeft, bool TrimRight)>();
        while (pos < src.Length)
        {
            int open = src.IndexOf('{', pos);
            while (open >= 0 && open + 1 < src.Length && src[open + 1] is not ('{' or '%' or '#'))
            {
                open = src.IndexOf('{', open + 1);
            }

            if (open < 0 || open + 1 >= src.Length)
            {
                raw.Add(("text", src[pos..], pos, false, false));
                break;
            }

            if (open > pos)
            {
                raw.Add(("text", src[pos..open], pos, false, false));
            }

            char kind = src[open + 1];
            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = FindClose(src, open + 2, close);
            if (end < 0)
            {
                throw Error(src, open, $"unclosed '{{{kind}'");
            }

            string body = src[(open + 2)..end];
            bool trimLeft = body.StartsWith('-');
            bool trimRight = body.EndsWith('-');
            body = body.Trim('-', '+').Trim();
            raw.Add((kind switch { '{' => "expr", '%' => "stmt", _ => "comment" }, body, open, trimLeft, trimRight));
            pos = end + 2;
        }

        // Whitespace control: '-' strips the neighbouring text; HF renders with trim_blocks and lstrip_blocks.
        for (int i = 0; i < raw.Count; i++)
        {
            if (raw[i].Kind != "text")
            {
                continue;
            }

            string text = raw[i].Body;

            // Right edge first, on the source text, so lstrip_blocks sees the line start as written.
            if (i + 1 < raw.Count && raw[i + 1].Kind != "text")
            {
                if (raw[i + 1].TrimLeft)
                {
                    text = text.TrimEnd();
                }
                else if (raw[i + 1].Kind is "stmt" or "comment")
                {
                    // lstrip_blocks: spaces and tabs between the start of a line and a block tag go.
                    int lineStart = text.LastIndexOf('\n') + 1;
                    bool startsLine = lineStart > 0 || i == 0;
                    if (startsLine && text.AsSpan(lineStart).IndexOfAnyExcept(' ', '\t') < 0)
                    {
                        text = text[..lineStart];
                    }
                }
            }

            if (i > 0 && raw[i - 1].Kind != "text")
            {
                if (raw[i - 1].TrimRight)
                {
                    text = text.TrimStart();
                }
                else if (raw[i - 1].Kind is "stmt" or "comment")
                {
                    // trim_blocks: the first newline after a block tag goes.
                    text = text.StartsWith("\r\n", StringComparison.Ordinal) ? text[2..] : text.StartsWith('\n') ? text[1..] : text;
                }
            }

            raw[i] = raw[i] with { Body = text };
        }

        foreach ((string kind, string body, int p, _, _) in raw)
        {
            if (kind != "comment" && !(kind == "text" && body.Length == 0))
            {
                parts.Add((kind, body, p));
            }
        }

        return parts;
    }

    private static int FindClose(string src, int from, string close)
    {
        char? quote = null;
        for (int i = from; i < src.Length - 1; i++)
        {
            char c = src[i];
            if (quote is not null)
            {
                if (c == '\\')
                {
                    i++;
                }
                else if (c == quote)
                {
                    quote = null;
                }
            }
            else if (c is '\'' or '"' && close != "#}")
            {
                quote = c;
            }
            else if (c == close[0] && src[i + 1] == close[1])
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>A syntax error at <paramref name="position"/>, with its line number.</summary>
    public static DataException Error(string src, int position, string message)
    {
        int line = 1 + src.AsSpan(0, Math.Min(position, src.Length)).Count('\n');
        return new DataException($"Chat template, line {line} (offset {position}): {message}.");
    }
}
