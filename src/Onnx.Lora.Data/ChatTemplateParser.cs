using System.Runtime.CompilerServices;

namespace Onnx.Lora.Data;

using static ChatTemplateSyntax;

/// <summary>Parses the statements of a chat template (if/for/set/generation) into <see cref="ChatTemplateSyntax"/> nodes.</summary>
internal sealed class ChatTemplateParser
{
    private readonly string _src;
    private readonly List<(string Kind, string Body, int Position)> _parts;
    private int _cursor;

    public ChatTemplateParser(string src)
    {
        _src = src;
        _parts = ChatTemplateLexer.Lex(src);
    }

    public bool SawGeneration { get; private set; }

    public List<TemplateNode> ParseAll()
    {
        List<TemplateNode> nodes = ParseBlock(out string? end, out int at);
        if (end is not null)
        {
            throw Error(at, $"unexpected '{{% {end} %}}'");
        }

        return nodes;
    }

    private List<TemplateNode> ParseBlock(out string? endTag, out int endAt, params string[] terminators)
    {
        // Thousands of nested {% if %} blocks would overflow the stack, which no catch can handle.
        if (!RuntimeHelpers.TryEnsureSufficientExecutionStack())
        {
            throw Error(_cursor < _parts.Count ? _parts[_cursor].Position : _src.Length, "blocks are nested too deeply");
        }

        var nodes = new List<TemplateNode>();
        while (_cursor < _parts.Count)
        {
            (string kind, string body, int pos) = _parts[_cursor++];
            switch (kind)
            {
                case "text":
                    nodes.Add(new TextNode(pos, body));
                    break;
                case "expr":
                    nodes.Add(new OutputNode(pos, new ChatExpressionParser(body, pos, this).ParseWhole()));
                    break;
                default:
                    string keyword = body.Split((char[])[' ', '\t', '\n', '\r'], 2)[0];
                    if (terminators.Contains(keyword))
                    {
                        endTag = body;
                        endAt = pos;
                        return nodes;
                    }

                    nodes.Add(ParseStatement(keyword, body, pos));
                    break;
            }
        }

        if (terminators.Length > 0)
        {
            throw Error(_src.Length, $"missing '{{% {terminators[^1]} %}}'");
        }

        endTag = null;
        endAt = _src.Length;
        return nodes;
    }

    private TemplateNode ParseStatement(string keyword, string body, int pos)
    {
        string rest = body[keyword.Length..].Trim();
        switch (keyword)
        {
            case "if":
            {
                var branches = new List<(Expr, List<TemplateNode>)>();
                Expr condition = new ChatExpressionParser(rest, pos, this).ParseWhole();
                while (true)
                {
                    List<TemplateNode> block = ParseBlock(out string? end, out int at, "elif", "else", "endif");
                    branches.Add((condition, block));
                    if (end!.StartsWith("elif", StringComparison.Ordinal))
                    {
                        condition = new ChatExpressionParser(end[4..].Trim(), at, this).ParseWhole();
                        continue;
                    }

                    if (end.StartsWith("else", StringComparison.Ordinal))
                    {
                        List<TemplateNode> elseBlock = ParseBlock(out _, out _, "endif");
                        return new IfNode(pos, branches, elseBlock);
                    }

                    return new IfNode(pos, branches, null);
                }
            }

            case "for":
            {
                int inAt = rest.IndexOf(" in ", StringComparison.Ordinal);
                if (inAt < 0)
                {
                    throw Error(pos, "expected 'for x in ...'");
                }

                string[] targets = rest[..inAt].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
                string iterable = rest[(inAt + 4)..];
                if (iterable.Contains(" if ", StringComparison.Ordinal) || iterable.TrimEnd().EndsWith(" recursive", StringComparison.Ordinal))
                {
                    throw Error(pos, "loop filters ('for x in xs if ...') and recursive loops are not supported");
                }

                Expr source = new ChatExpressionParser(iterable, pos, this).ParseWhole();
                List<TemplateNode> loopBody = ParseBlock(out string? end, out _, "else", "endfor");
                List<TemplateNode>? elseBody = end == "else" ? ParseBlock(out _, out _, "endfor") : null;
                return new ForNode(pos, targets, source, loopBody, elseBody);
            }

            case "set":
            {
                int eq = rest.IndexOf('=', StringComparison.Ordinal);
                if (eq < 0)
                {
                    throw Error(pos, "block '{% set %}...{% endset %}' is not supported; use '{% set x = ... %}'");
                }

                string target = rest[..eq].Trim();
                Expr value = new ChatExpressionParser(rest[(eq + 1)..], pos, this).ParseWhole();
                int dot = target.IndexOf('.', StringComparison.Ordinal);
                return dot < 0 ? new SetNode(pos, target, null, value) : new SetNode(pos, target[..dot], target[(dot + 1)..], value);
            }

            case "generation":
            {
                SawGeneration = true;
                return new GenerationNode(pos, ParseBlock(out _, out _, "endgeneration"));
            }

            default:
                throw Error(pos, $"statement '{{% {keyword} %}}' is not supported (supported: if, for, set, generation)");
        }
    }

    public DataException Error(int position, string message) => ChatTemplateLexer.Error(_src, position, message);
}
