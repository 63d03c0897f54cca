using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>One chat message.</summary>
/// <param name="Role">system, user, assistant (or any role the template knows).</param>
/// <param name="Content">Message text.</param>
public sealed record ChatMessage(string Role, string Content);

/// <summary>A rendered conversation and the char spans whose tokens carry loss (assistant replies).</summary>
/// <param name="Text">The rendered text.</param>
/// <param name="TrainableSpans">[Start, End) char ranges of assistant content (plus what the template emits after it in the same message: end-of-turn / EOS).</param>
public sealed record RenderedChat(string Text, IReadOnlyList<(int Start, int End)> TrainableSpans);

/// <summary>
/// A small, safe renderer for the Jinja chat templates found in tokenizer_config.json (Llama-2, ChatML, Zephyr,
/// Mistral, Gemma style): text, <c>{{ expr }}</c>, <c>{% if/elif/else %}</c>, <c>{% for x in xs %}</c> with
/// <c>loop.index0/index/first/last/length</c>, <c>{% set %}</c> (incl. <c>namespace()</c> attributes),
/// <c>{% generation %}</c> blocks, whitespace control (<c>{%-</c>, <c>-%}</c>) and HF's trim_blocks/lstrip_blocks,
/// string/number/list/dict literals, <c>+ - * / % ~</c>, comparisons, <c>and/or/not/in/is</c>, conditional
/// expressions, indexing and slicing, string methods (strip, upper, lower, title, startswith, endswith, split,
/// replace), dict methods (items, keys, values, get), filters (trim, length, upper, lower, title, capitalize,
/// tojson, string, int, default, first, last, join, list, replace) and <c>raise_exception</c>. It evaluates only
/// these constructs — no attribute access to .NET objects, no imports — so a template cannot do anything but
/// produce text. Anything else raises a <see cref="DataException"/> naming the construct and its position.
/// </summary>
/// <remarks>
/// Loss masking: when the template has <c>{% generation %}</c> blocks, their output is trainable. Otherwise, in each
/// loop iteration whose item is an assistant message, the output from the first occurrence of the message's
/// (stripped) content to the end of that iteration is trainable — the reply and the end-of-turn/EOS the template
/// writes after it, but not the role header before it.
/// </remarks>
public sealed class ChatTemplate
{
    /// <summary>
    /// The template used when the tokenizer has none: ChatML turns, BOS first, EOS after each assistant turn:
    /// <c>&lt;s&gt;&lt;|im_start|&gt;user\nHi&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\nHello&lt;|im_end|&gt;&lt;/s&gt;\n</c>.
    /// </summary>
    public const string DefaultTemplate =
        "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}" +
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private readonly List<TemplateNode> _nodes;
    private readonly bool _hasGenerationBlocks;

    private ChatTemplate(string source, List<TemplateNode> nodes, bool hasGenerationBlocks)
    {
        Source = source;
        _nodes = nodes;
        _hasGenerationBlocks = hasGenerationBlocks;
    }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>Parses <paramref name="template"/>.</summary>
    /// <exception cref="DataException">A syntax error or unsupported construct, with its position.</exception>
    public static ChatTemplate Parse(string template)
    {
        ArgumentNullException.ThrowIfNull(template);
        var parser = new TemplateParser(template);
        List<TemplateNode> nodes = parser.ParseAll();
        return new ChatTemplate(template, nodes, parser.SawGeneration);
    }

    /// <summary>Renders <paramref name="messages"/>.</summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="bosToken">Value of <c>bos_token</c> ("" when null).</param>
    /// <param name="eosToken">Value of <c>eos_token</c> ("" when null).</param>
    /// <param name="addGenerationPrompt">Value of <c>add_generation_prompt</c>.</param>
    /// <exception cref="DataException">The template raised an exception or hit an unsupported operation.</exception>
    public RenderedChat Render(IReadOnlyList<ChatMessage> messages, string? bosToken, string? eosToken, bool addGenerationPrompt = false)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["bos_token"] = bosToken ?? "",
            ["eos_token"] = eosToken ?? "",
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        var ctx = new RenderContext(scope);
        ctx.Run(_nodes);
        string text = ctx.Output.ToString();
        List<(int, int)> spans = _hasGenerationBlocks ? ctx.GenerationSpans : ctx.AssistantSpans(text);
        return new RenderedChat(text, spans);
    }

    // ---------------------------------------------------------------- AST

    private abstract record TemplateNode(int Position);

    private sealed record TextNode(int Position, string Text) : TemplateNode(Position);

    private sealed record OutputNode(int Position, Expr Value) : TemplateNode(Position);

    private sealed record IfNode(int Position, List<(Expr Condition, List<TemplateNode> Body)> Branches, List<TemplateNode>? Else) : TemplateNode(Position);

    private sealed record ForNode(int Position, string[] Targets, Expr Iterable, List<TemplateNode> Body, List<TemplateNode>? Else) : TemplateNode(Position);

    private sealed record SetNode(int Position, string Target, string? Attribute, Expr Value) : TemplateNode(Position);

    private sealed record GenerationNode(int Position, List<TemplateNode> Body) : TemplateNode(Position);

    private abstract record Expr(int Position);

    private sealed record Literal(int Position, object? Value) : Expr(Position);

    private sealed record Name(int Position, string Identifier) : Expr(Position);

    private sealed record ListExpr(int Position, List<Expr> Items) : Expr(Position);

    private sealed record DictExpr(int Position, List<(Expr Key, Expr Value)> Items) : Expr(Position);

    private sealed record Attribute(int Position, Expr Target, string Member) : Expr(Position);

    private sealed record Index(int Position, Expr Target, Expr Key) : Expr(Position);

    private sealed record Slice(int Position, Expr Target, Expr? Start, Expr? Stop) : Expr(Position);

    private sealed record Call(int Position, Expr Target, List<Expr> Args, List<(string Name, Expr Value)> Kwargs) : Expr(Position);

    private sealed record Filter(int Position, Expr Target, string FilterName, List<Expr> Args) : Expr(Position);

    private sealed record Test(int Position, Expr Target, string TestName, bool Negated) : Expr(Position);

    private sealed record Unary(int Position, string Op, Expr Operand) : Expr(Position);

    private sealed record Binary(int Position, string Op, Expr Left, Expr Right) : Expr(Position);

    private sealed record Conditional(int Position, Expr Condition, Expr Then, Expr? Else) : Expr(Position);

    /// <summary>Jinja's undefined value: falsy, renders as "", compares unequal to everything defined.</summary>
    private sealed class Undefined
    {
        public static readonly Undefined Instance = new();
    }

    // ---------------------------------------------------------------- parsing

    private sealed class TemplateParser
    {
        private readonly string _src;
        private readonly List<(string Kind, string Body, int Position)> _parts = [];
        private int _cursor;

        public TemplateParser(string src)
        {
            _src = src;
            Lex();
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

        private void Lex()
        {
            int pos = 0;
            var raw = new List<(string Kind, string Body, int Pos, bool TrimLeft, bool TrimRight)>();
            while (pos < _src.Length)
            {
                int open = _src.IndexOf('{', pos);
                while (open >= 0 && open + 1 < _src.Length && _src[open + 1] is not ('{' or '%' or '#'))
                {
                    open = _src.IndexOf('{', open + 1);
                }

                if (open < 0 || open + 1 >= _src.Length)
                {
                    raw.Add(("text", _src[pos..], pos, false, false));
                    break;
                }

                if (open > pos)
                {
                    raw.Add(("text", _src[pos..open], pos, false, false));
                }

                char kind = _src[open + 1];
                string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
                int end = FindClose(open + 2, close);
                if (end < 0)
                {
                    throw Error(open, $"unclosed '{{{kind}'");
                }

                string body = _src[(open + 2)..end];
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
                    _parts.Add((kind, body, p));
                }
            }
        }

        private int FindClose(int from, string close)
        {
            char? quote = null;
            for (int i = from; i < _src.Length - 1; i++)
            {
                char c = _src[i];
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
                else if (c == close[0] && _src[i + 1] == close[1])
                {
                    return i;
                }
            }

            return -1;
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
                        nodes.Add(new OutputNode(pos, new ExprParser(body, pos, this).ParseWhole()));
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
                    Expr condition = new ExprParser(rest, pos, this).ParseWhole();
                    while (true)
                    {
                        List<TemplateNode> block = ParseBlock(out string? end, out int at, "elif", "else", "endif");
                        branches.Add((condition, block));
                        if (end!.StartsWith("elif", StringComparison.Ordinal))
                        {
                            condition = new ExprParser(end[4..].Trim(), at, this).ParseWhole();
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

                    Expr source = new ExprParser(iterable, pos, this).ParseWhole();
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
                    Expr value = new ExprParser(rest[(eq + 1)..], pos, this).ParseWhole();
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

        public DataException Error(int position, string message)
        {
            int line = 1 + _src.AsSpan(0, Math.Min(position, _src.Length)).Count('\n');
            return new DataException($"Chat template, line {line} (offset {position}): {message}.");
        }
    }

    private sealed class ExprParser
    {
        private static readonly string[] s_operators = ["==", "!=", "<=", ">=", "//", "**", "(", ")", "[", "]", "{", "}", ",", ":", ".", "|", "+", "-", "*", "/", "%", "~", "<", ">", "="];
        private readonly List<(string Kind, string Text, int Pos)> _tokens = [];
        private readonly int _base;
        private readonly TemplateParser _owner;
        private int _i;

        public ExprParser(string text, int basePosition, TemplateParser owner)
        {
            _base = basePosition;
            _owner = owner;
            Tokenize(text);
        }

        public Expr ParseWhole()
        {
            Expr e = ParseConditional();
            if (_i < _tokens.Count)
            {
                throw _owner.Error(_base, $"unexpected '{_tokens[_i].Text}' in expression");
            }

            return e;
        }

        private void Tokenize(string s)
        {
            int i = 0;
            while (i < s.Length)
            {
                char c = s[i];
                if (char.IsWhiteSpace(c))
                {
                    i++;
                }
                else if (c is '\'' or '"')
                {
                    var sb = new StringBuilder();
                    int start = i++;
                    while (i < s.Length && s[i] != c)
                    {
                        if (s[i] == '\\' && i + 1 < s.Length)
                        {
                            i++;
                            sb.Append(s[i] switch { 'n' => '\n', 't' => '\t', 'r' => '\r', _ => s[i] });
                        }
                        else
                        {
                            sb.Append(s[i]);
                        }

                        i++;
                    }

                    if (i >= s.Length)
                    {
                        throw _owner.Error(_base + start, "unterminated string");
                    }

                    i++;
                    _tokens.Add(("str", sb.ToString(), start));
                }
                else if (char.IsDigit(c))
                {
                    int start = i;
                    while (i < s.Length && (char.IsDigit(s[i]) || (s[i] == '.' && i + 1 < s.Length && char.IsDigit(s[i + 1]))))
                    {
                        i++;
                    }

                    _tokens.Add(("num", s[start..i], start));
                }
                else if (char.IsLetter(c) || c == '_')
                {
                    int start = i;
                    while (i < s.Length && (char.IsLetterOrDigit(s[i]) || s[i] == '_'))
                    {
                        i++;
                    }

                    _tokens.Add(("name", s[start..i], start));
                }
                else
                {
                    string? op = s_operators.FirstOrDefault(o => string.CompareOrdinal(s, i, o, 0, o.Length) == 0);
                    if (op is null)
                    {
                        throw _owner.Error(_base + i, $"unexpected character '{c}'");
                    }

                    _tokens.Add(("op", op, i));
                    i += op.Length;
                }
            }
        }

        // Deep parentheses or long "- - - x" / "not not x" chains recurse once per level.
        private void EnsureStack()
        {
            if (!RuntimeHelpers.TryEnsureSufficientExecutionStack())
            {
                throw _owner.Error(Pos, "expression is nested too deeply");
            }
        }

        private bool Peek(string text, int ahead = 0) =>
            _i + ahead < _tokens.Count && _tokens[_i + ahead].Kind is "op" or "name" && _tokens[_i + ahead].Text == text;

        private bool Accept(string text)
        {
            if (Peek(text))
            {
                _i++;
                return true;
            }

            return false;
        }

        private void Expect(string text)
        {
            if (!Accept(text))
            {
                string found = _i < _tokens.Count ? _tokens[_i].Text : "end of expression";
                throw _owner.Error(_base, $"expected '{text}', found '{found}'");
            }
        }

        private int Pos => _base + (_i < _tokens.Count ? _tokens[_i].Pos : 0);

        private Expr ParseConditional()
        {
            EnsureStack();
            Expr value = ParseOr();
            if (Accept("if"))
            {
                Expr condition = ParseOr();
                Expr? otherwise = Accept("else") ? ParseConditional() : null;
                return new Conditional(value.Position, condition, value, otherwise);
            }

            return value;
        }

        private Expr ParseOr()
        {
            Expr left = ParseAnd();
            while (Accept("or"))
            {
                left = new Binary(left.Position, "or", left, ParseAnd());
            }

            return left;
        }

        private Expr ParseAnd()
        {
            Expr left = ParseNot();
            while (Accept("and"))
            {
                left = new Binary(left.Position, "and", left, ParseNot());
            }

            return left;
        }

        private Expr ParseNot()
        {
            EnsureStack();
            int p = Pos;
            return Accept("not") ? new Unary(p, "not", ParseNot()) : ParseComparison();
        }

        private Expr ParseComparison()
        {
            Expr left = ParseConcat();
            while (true)
            {
                if (Peek("not") && Peek("in", 1))
                {
                    _i += 2;
                    left = new Unary(left.Position, "not", new Binary(left.Position, "in", left, ParseConcat()));
                }
                else if (Accept("in"))
                {
                    left = new Binary(left.Position, "in", left, ParseConcat());
                }
                else if (Accept("is"))
                {
                    bool negated = Accept("not");
                    string test = _i < _tokens.Count ? _tokens[_i++].Text : throw _owner.Error(_base, "expected a test name after 'is'");
                    left = new Test(left.Position, left, test, negated);
                }
                else if (_i < _tokens.Count && _tokens[_i].Kind == "op" && _tokens[_i].Text is "==" or "!=" or "<" or ">" or "<=" or ">=")
                {
                    string op = _tokens[_i++].Text;
                    left = new Binary(left.Position, op, left, ParseConcat());
                }
                else
                {
                    return left;
                }
            }
        }

        private Expr ParseConcat()
        {
            Expr left = ParseAdditive();
            while (Accept("~"))
            {
                left = new Binary(left.Position, "~", left, ParseAdditive());
            }

            return left;
        }

        private Expr ParseAdditive()
        {
            Expr left = ParseMultiplicative();
            while (Peek("+") || Peek("-"))
            {
                string op = _tokens[_i++].Text;
                left = new Binary(left.Position, op, left, ParseMultiplicative());
            }

            return left;
        }

        private Expr ParseMultiplicative()
        {
            Expr left = ParseUnary();
            while (Peek("*") || Peek("/") || Peek("//") || Peek("%"))
            {
                string op = _tokens[_i++].Text;
                left = new Binary(left.Position, op, left, ParseUnary());
            }

            return left;
        }

        private Expr ParseUnary()
        {
            EnsureStack();
            int p = Pos;
            return Accept("-") ? new Unary(p, "-", ParseUnary()) : ParsePostfix(ParsePrimary());
        }

        private Expr ParsePostfix(Expr e)
        {
            while (true)
            {
                int p = Pos;
                if (Accept("."))
                {
                    e = new Attribute(p, e, _tokens[_i++].Text);
                }
                else if (Accept("["))
                {
                    Expr? start = Peek(":") ? null : ParseConditional();
                    if (Accept(":"))
                    {
                        Expr? stop = Peek("]") ? null : ParseConditional();
                        Expect("]");
                        e = new Slice(p, e, start, stop);
                    }
                    else
                    {
                        Expect("]");
                        e = new Index(p, e, start!);
                    }
                }
                else if (Accept("("))
                {
                    (List<Expr> args, List<(string, Expr)> kwargs) = ParseArguments();
                    e = new Call(p, e, args, kwargs);
                }
                else if (Accept("|"))
                {
                    string name = _tokens[_i++].Text;
                    List<Expr> args = [];
                    if (Accept("("))
                    {
                        args = ParseArguments().Args;
                    }

                    e = new Filter(p, e, name, args);
                }
                else
                {
                    return e;
                }
            }
        }

        private (List<Expr> Args, List<(string, Expr)> Kwargs) ParseArguments()
        {
            var args = new List<Expr>();
            var kwargs = new List<(string, Expr)>();
            while (!Accept(")"))
            {
                if (_i + 1 < _tokens.Count && _tokens[_i].Kind == "name" && Peek("=", 1))
                {
                    string name = _tokens[_i].Text;
                    _i += 2;
                    kwargs.Add((name, ParseConditional()));
                }
                else
                {
                    args.Add(ParseConditional());
                }

                if (!Accept(","))
                {
                    Expect(")");
                    break;
                }
            }

            return (args, kwargs);
        }

        private Expr ParsePrimary()
        {
            if (_i >= _tokens.Count)
            {
                throw _owner.Error(_base, "expression ends too early");
            }

            (string kind, string text, int pos) = _tokens[_i++];
            int p = _base + pos;
            switch (kind)
            {
                case "str":
                    string s = text;
                    while (_i < _tokens.Count && _tokens[_i].Kind == "str")
                    {
                        s += _tokens[_i++].Text; // adjacent literals concatenate, as in Python
                    }

                    return new Literal(p, s);
                case "num":
                    return text.Contains('.', StringComparison.Ordinal)
                        ? new Literal(p, double.Parse(text, CultureInfo.InvariantCulture))
                        : new Literal(p, long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long integer) ? integer
                            : throw _owner.Error(p, $"integer literal {text} does not fit 64 bits"));
                case "name":
                    return text switch
                    {
                        "true" or "True" => new Literal(p, true),
                        "false" or "False" => new Literal(p, false),
                        "none" or "None" => new Literal(p, null),
                        _ => new Name(p, text),
                    };
            }

            switch (text)
            {
                case "(":
                    Expr inner = ParseConditional();
                    Expect(")");
                    return inner;
                case "[":
                    var items = new List<Expr>();
                    while (!Accept("]"))
                    {
                        items.Add(ParseConditional());
                        if (!Accept(","))
                        {
                            Expect("]");
                            break;
                        }
                    }

                    return new ListExpr(p, items);
                case "{":
                    var pairs = new List<(Expr, Expr)>();
                    while (!Accept("}"))
                    {
                        Expr key = ParseConditional();
                        Expect(":");
                        pairs.Add((key, ParseConditional()));
                        if (!Accept(","))
                        {
                            Expect("}");
                            break;
                        }
                    }

                    return new DictExpr(p, pairs);
                default:
                    throw _owner.Error(p, $"unexpected '{text}'");
            }
        }
    }

    // ---------------------------------------------------------------- evaluation

    private sealed class RenderContext(Dictionary<string, object?> globals)
    {
        private readonly List<Dictionary<string, object?>> _scopes = [globals];
        private readonly List<(int Start, int End, string Content)> _assistantTurns = [];

        public StringBuilder Output { get; } = new();

        public List<(int, int)> GenerationSpans { get; } = [];

        public List<(int, int)> AssistantSpans(string text)
        {
            var spans = new List<(int, int)>();
            foreach ((int start, int end, string content) in _assistantTurns)
            {
                string needle = content.Trim();
                int at = needle.Length == 0 ? -1 : text.IndexOf(needle, start, end - start, StringComparison.Ordinal);
                spans.Add((at < 0 ? start : at, end));
            }

            return spans;
        }

        public void Run(List<TemplateNode> nodes)
        {
            if (nodes.Count > 0 && !RuntimeHelpers.TryEnsureSufficientExecutionStack())
            {
                throw Fail(nodes[0].Position, "blocks are nested too deeply to render");
            }

            foreach (TemplateNode node in nodes)
            {
                Execute(node);
            }
        }

        private void Execute(TemplateNode node)
        {
            switch (node)
            {
                case TextNode t:
                    Output.Append(t.Text);
                    break;
                case OutputNode o:
                    Output.Append(ToText(Eval(o.Value)));
                    break;
                case IfNode i:
                    foreach ((Expr condition, List<TemplateNode> body) in i.Branches)
                    {
                        if (Truthy(Eval(condition)))
                        {
                            Run(body);
                            return;
                        }
                    }

                    if (i.Else is not null)
                    {
                        Run(i.Else);
                    }

                    break;
                case ForNode f:
                    ExecuteFor(f);
                    break;
                case SetNode s:
                    object? value = Eval(s.Value);
                    if (s.Attribute is null)
                    {
                        _scopes[^1][s.Target] = value;
                    }
                    else if (Lookup(s.Target, s.Position) is Dictionary<string, object?> ns)
                    {
                        ns[s.Attribute] = value;
                    }
                    else
                    {
                        throw Fail(s.Position, $"'{s.Target}' is not a namespace; cannot set '{s.Target}.{s.Attribute}'");
                    }

                    break;
                case GenerationNode g:
                    int start = Output.Length;
                    Run(g.Body);
                    GenerationSpans.Add((start, Output.Length));
                    break;
            }
        }

        private void ExecuteFor(ForNode f)
        {
            List<object?> items = Eval(f.Iterable) switch
            {
                List<object?> list => list,
                Dictionary<string, object?> dict => dict.Keys.Select(k => (object?)k).ToList(),
                string s => s.Select(c => (object?)c.ToString()).ToList(),
                null or Undefined => [],
                var other => throw Fail(f.Position, $"cannot loop over {TypeName(other)}"),
            };
            if (items.Count == 0)
            {
                if (f.Else is not null)
                {
                    Run(f.Else);
                }

                return;
            }

            var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
            _scopes.Add(scope);
            try
            {
                for (int i = 0; i < items.Count; i++)
                {
                    if (f.Targets.Length == 1)
                    {
                        scope[f.Targets[0]] = items[i];
                    }
                    else if (items[i] is List<object?> tuple && tuple.Count == f.Targets.Length)
                    {
                        for (int k = 0; k < tuple.Count; k++)
                        {
                            scope[f.Targets[k]] = tuple[k];
                        }
                    }
                    else
                    {
                        throw Fail(f.Position, $"cannot unpack {TypeName(items[i])} into {f.Targets.Length} names");
                    }

                    scope["loop"] = new Dictionary<string, object?>(StringComparer.Ordinal)
                    {
                        ["index0"] = (long)i,
                        ["index"] = (long)i + 1,
                        ["revindex"] = (long)(items.Count - i),
                        ["revindex0"] = (long)(items.Count - i - 1),
                        ["first"] = i == 0,
                        ["last"] = i == items.Count - 1,
                        ["length"] = (long)items.Count,
                        ["previtem"] = i > 0 ? items[i - 1] : Undefined.Instance,
                        ["nextitem"] = i + 1 < items.Count ? items[i + 1] : Undefined.Instance,
                    };
                    int start = Output.Length;
                    Run(f.Body);
                    if (items[i] is Dictionary<string, object?> message && message.TryGetValue("role", out object? role) && role is "assistant"
                        && message.TryGetValue("content", out object? content) && content is string text)
                    {
                        _assistantTurns.Add((start, Output.Length, text));
                    }
                }
            }
            finally
            {
                _scopes.RemoveAt(_scopes.Count - 1);
            }
        }

        private object? Lookup(string name, int position)
        {
            for (int i = _scopes.Count - 1; i >= 0; i--)
            {
                if (_scopes[i].TryGetValue(name, out object? v))
                {
                    return v;
                }
            }

            _ = position;
            return Undefined.Instance;
        }

        private object? Eval(Expr e)
        {
            if (!RuntimeHelpers.TryEnsureSufficientExecutionStack())
            {
                throw Fail(e.Position, "expression is nested too deeply to evaluate");
            }

            switch (e)
            {
                case Literal l:
                    return l.Value;
                case Name n:
                    return n.Identifier is "raise_exception" or "namespace" or "range" ? new BuiltinFunction(n.Identifier) : Lookup(n.Identifier, n.Position);
                case ListExpr l:
                    return l.Items.Select(Eval).ToList();
                case DictExpr d:
                    var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                    foreach ((Expr k, Expr v) in d.Items)
                    {
                        dict[ToText(Eval(k))] = Eval(v);
                    }

                    return dict;
                case Attribute a:
                    object? target = Eval(a.Target);
                    if (target is Dictionary<string, object?> map)
                    {
                        return map.TryGetValue(a.Member, out object? v) ? v : new BoundMethod(target, a.Member);
                    }

                    return target is Undefined ? Undefined.Instance : new BoundMethod(target, a.Member);
                case Index ix:
                    return IndexInto(Eval(ix.Target), Eval(ix.Key), ix.Position);
                case Slice s:
                    return SliceOf(Eval(s.Target), s.Start is null ? null : Eval(s.Start), s.Stop is null ? null : Eval(s.Stop), s.Position);
                case Call c:
                    return Invoke(Eval(c.Target), c.Args.Select(Eval).ToList(), c.Kwargs.Select(k => (k.Name, Eval(k.Value))).ToList(), c.Position);
                case Filter f:
                    return ApplyFilter(f.FilterName, Eval(f.Target), f.Args.Select(Eval).ToList(), f.Position);
                case Test t:
                    return ApplyTest(t.TestName, Eval(t.Target), t.Position) != t.Negated;
                case Unary u:
                    object? operand = Eval(u.Operand);
                    return u.Op == "not" ? !Truthy(operand) : operand switch
                    {
                        long i => -i,
                        double d => -d,
                        _ => throw Fail(u.Position, $"cannot negate {TypeName(operand)}"),
                    };
                case Binary b:
                    return EvalBinary(b);
                case Conditional c:
                    return Truthy(Eval(c.Condition)) ? Eval(c.Then) : c.Else is null ? Undefined.Instance : Eval(c.Else);
                default:
                    throw Fail(e.Position, "unsupported expression");
            }
        }

        private object? EvalBinary(Binary b)
        {
            if (b.Op == "and")
            {
                object? l = Eval(b.Left);
                return Truthy(l) ? Eval(b.Right) : l;
            }

            if (b.Op == "or")
            {
                object? l = Eval(b.Left);
                return Truthy(l) ? l : Eval(b.Right);
            }

            object? left = Eval(b.Left);
            object? right = Eval(b.Right);
            switch (b.Op)
            {
                case "~":
                    return ToText(left) + ToText(right);
                case "==":
                    return AreEqual(left, right);
                case "!=":
                    return !AreEqual(left, right);
                case "in":
                    return right switch
                    {
                        string s when left is string sub => s.Contains(sub, StringComparison.Ordinal),
                        List<object?> list => list.Any(x => AreEqual(x, left)),
                        Dictionary<string, object?> d => left is string k && d.ContainsKey(k),
                        _ => throw Fail(b.Position, $"'in' needs a string, list or dict on the right, found {TypeName(right)}"),
                    };
                case "+" when left is string ls && right is string rs:
                    return ls + rs;
                case "+" when left is List<object?> ll && right is List<object?> rl:
                    return ll.Concat(rl).ToList();
            }

            if (left is string && right is string && b.Op is "<" or ">" or "<=" or ">=")
            {
                int c = string.CompareOrdinal((string)left, (string)right);
                return b.Op switch { "<" => c < 0, ">" => c > 0, "<=" => c <= 0, _ => c >= 0 };
            }

            if (left is not (long or double or bool) || right is not (long or double or bool))
            {
                throw Fail(b.Position, $"operator '{b.Op}' cannot combine {TypeName(left)} and {TypeName(right)}");
            }

            if (left is long li && right is long ri && b.Op is "+" or "-" or "*" or "%" or "//")
            {
                return b.Op switch
                {
                    "+" => li + ri,
                    "-" => li - ri,
                    "*" => li * ri,
                    "%" => ri == 0 ? throw Fail(b.Position, "modulo by zero") : ri == -1 ? 0 : ((li % ri) + ri) % ri, // long.MinValue % -1 overflows
                    _ => ri == 0 ? throw Fail(b.Position, "division by zero") : (long)Math.Floor((double)li / ri),
                };
            }

            double x = Convert.ToDouble(left, CultureInfo.InvariantCulture), y = Convert.ToDouble(right, CultureInfo.InvariantCulture);
            return b.Op switch
            {
                "+" => x + y,
                "-" => x - y,
                "*" => x * y,
                "/" => x / y,
                "//" => Math.Floor(x / y),
                "%" => x - (y * Math.Floor(x / y)),
                "<" => x < y,
                ">" => x > y,
                "<=" => x <= y,
                ">=" => x >= y,
                _ => throw Fail(b.Position, $"unsupported operator '{b.Op}'"),
            };
        }

        private static object? IndexInto(object? target, object? key, int position) => (target, key) switch
        {
            (Dictionary<string, object?> d, string k) => d.TryGetValue(k, out object? v) ? v : Undefined.Instance,
            (List<object?> l, long i) => (i < 0 ? l.Count + i : i) is long j && j >= 0 && j < l.Count ? l[(int)j] : Undefined.Instance,
            (string s, long i) => (i < 0 ? s.Length + i : i) is long j && j >= 0 && j < s.Length ? s[(int)j].ToString() : Undefined.Instance,
            (Undefined, _) => Undefined.Instance,
            _ => throw Fail(position, $"cannot index {TypeName(target)} with {TypeName(key)}"),
        };

        // A slice of a string is a string, of a list a list: the analyzer's single-type suggestion (CA1859) does not apply.
        [System.Diagnostics.CodeAnalysis.SuppressMessage("Performance", "CA1859", Justification = "Returns a string or a list.")]
        private static object? SliceOf(object? target, object? start, object? stop, int position)
        {
            int count = target switch
            {
                List<object?> l => l.Count,
                string s => s.Length,
                _ => throw Fail(position, $"cannot slice {TypeName(target)}"),
            };
            int Bound(object? v, int fallback) => v switch
            {
                null => fallback,
                long i => (int)Math.Clamp(i < 0 ? count + i : i, 0, count),
                _ => throw Fail(position, $"slice bounds must be integers, found {TypeName(v)}"),
            };
            int a = Bound(start, 0), z = Math.Max(Bound(start, 0), Bound(stop, count));
            if (target is string str)
            {
                return str[a..z];
            }

            return ((List<object?>)target!).GetRange(a, z - a);
        }

        private static object? Invoke(object? callee, List<object?> args, List<(string Name, object? Value)> kwargs, int position)
        {
            if (callee is BuiltinFunction f)
            {
                switch (f.Name)
                {
                    case "raise_exception":
                        throw new DataException($"The chat template rejected the conversation: {ToText(args.FirstOrDefault())}");
                    case "namespace":
                        return kwargs.ToDictionary(k => k.Name, k => k.Value, StringComparer.Ordinal);
                    case "range":
                        if (args.Count is < 1 or > 2 || args.Any(a => a is not long))
                        {
                            throw Fail(position, "range() takes one or two integers");
                        }

                        long from = args.Count > 1 ? (long)args[0]! : 0, to = (long)args[^1]!;
                        // A template from the internet must not build a list of billions of items (a hang, then OutOfMemory).
                        if (to > from && (to - from > MaxRangeItems || to - from < 0))
                        {
                            throw Fail(position, $"range({from}, {to}) has more than {MaxRangeItems:N0} items");
                        }

                        return to <= from ? new List<object?>() : Enumerable.Range(0, (int)(to - from)).Select(i => (object?)(from + i)).ToList();
                }
            }

            if (callee is not BoundMethod m)
            {
                throw Fail(position, $"{TypeName(callee)} is not callable");
            }

            string Arg(int i) => args.Count > i && args[i] is string s ? s : throw Fail(position, $"'{m.Name}' needs a string argument {i + 1}");
            return (m.Target, m.Name) switch
            {
                (string s, "strip") => args.Count == 0 ? s.Trim() : s.Trim(Arg(0).ToCharArray()),
                (string s, "lstrip") => args.Count == 0 ? s.TrimStart() : s.TrimStart(Arg(0).ToCharArray()),
                (string s, "rstrip") => args.Count == 0 ? s.TrimEnd() : s.TrimEnd(Arg(0).ToCharArray()),
                (string s, "upper") => s.ToUpperInvariant(),
                (string s, "lower") => s.ToLowerInvariant(),
                (string s, "title") => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(s.ToLowerInvariant()),
                (string s, "capitalize") => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(),
                (string s, "startswith") => s.StartsWith(Arg(0), StringComparison.Ordinal),
                (string s, "endswith") => s.EndsWith(Arg(0), StringComparison.Ordinal),
                (string s, "split") => (args.Count == 0 ? s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries) : s.Split(Arg(0))).Select(x => (object?)x).ToList(),
                (string s, "replace") => s.Replace(Arg(0), Arg(1), StringComparison.Ordinal),
                (Dictionary<string, object?> d, "items") => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList(),
                (Dictionary<string, object?> d, "keys") => d.Keys.Select(k => (object?)k).ToList(),
                (Dictionary<string, object?> d, "values") => d.Values.ToList(),
                (Dictionary<string, object?> d, "get") => d.TryGetValue(Arg(0), out object? v) ? v : args.Count > 1 ? args[1] : null,
                _ => throw Fail(position, $"method '{m.Name}' of {TypeName(m.Target)} is not supported"),
            };
        }

        private static object? ApplyFilter(string name, object? value, List<object?> args, int position) => name switch
        {
            "trim" => ToText(value).Trim(),
            "upper" => ToText(value).ToUpperInvariant(),
            "lower" => ToText(value).ToLowerInvariant(),
            "title" => CultureInfo.InvariantCulture.TextInfo.ToTitleCase(ToText(value).ToLowerInvariant()),
            "capitalize" => ToText(value) is { Length: > 0 } s ? char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant() : "",
            "string" => ToText(value),
            "int" => value switch { long i => i, double d => (long)d, string s when long.TryParse(s, CultureInfo.InvariantCulture, out long i) => i, _ => 0L },
            "length" or "count" => value switch
            {
                string s => (long)s.Length,
                List<object?> l => (long)l.Count,
                Dictionary<string, object?> d => (long)d.Count,
                _ => throw Fail(position, $"'length' of {TypeName(value)}"),
            },
            "first" => value is List<object?> { Count: > 0 } l ? l[0] : Undefined.Instance,
            "last" => value is List<object?> { Count: > 0 } l ? l[^1] : Undefined.Instance,
            "list" => value is List<object?> l ? l : value is string s ? s.Select(c => (object?)c.ToString()).ToList() : throw Fail(position, $"'list' of {TypeName(value)}"),
            "join" => value is List<object?> l ? string.Join(args.Count > 0 ? ToText(args[0]) : "", l.Select(ToText)) : throw Fail(position, $"'join' of {TypeName(value)}"),
            "default" or "d" => value is Undefined || (args.Count > 1 && Truthy(args[1]) && !Truthy(value)) ? (args.Count > 0 ? args[0] : "") : value,
            "replace" => ToText(value).Replace(ToText(args[0]), ToText(args[1]), StringComparison.Ordinal),
            "tojson" => ToJson(value),
            _ => throw Fail(position, $"filter '{name}' is not supported (supported: trim, length, upper, lower, title, capitalize, string, int, first, last, list, join, default, replace, tojson)"),
        };

        private static bool ApplyTest(string name, object? value, int position) => name switch
        {
            "defined" => value is not Undefined,
            "undefined" => value is Undefined,
            "none" => value is null,
            "string" => value is string,
            "number" => value is long or double,
            "integer" => value is long,
            "boolean" => value is bool,
            "mapping" => value is Dictionary<string, object?>,
            "sequence" or "iterable" => value is List<object?> or string or Dictionary<string, object?>,
            "true" => value is true,
            "false" => value is false,
            "even" => value is long i && i % 2 == 0,
            "odd" => value is long j && j % 2 != 0,
            _ => throw Fail(position, $"test 'is {name}' is not supported"),
        };

        private static bool AreEqual(object? a, object? b) => (a, b) switch
        {
            (Undefined, Undefined) => true,
            (Undefined, _) or (_, Undefined) => false,
            (null, null) => true,
            (null, _) or (_, null) => false,
            (string x, string y) => x == y,
            (bool x, bool y) => x == y,
            (long or double, long or double) when a is not bool && b is not bool => Convert.ToDouble(a, CultureInfo.InvariantCulture) == Convert.ToDouble(b, CultureInfo.InvariantCulture),
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => AreEqual(p.First, p.Second)),
            _ => ReferenceEquals(a, b),
        };

        private static bool Truthy(object? v) => v switch
        {
            null or Undefined => false,
            bool b => b,
            string s => s.Length > 0,
            long i => i != 0,
            double d => d != 0,
            List<object?> l => l.Count > 0,
            Dictionary<string, object?> d => d.Count > 0,
            _ => true,
        };

        private static string ToText(object? v) => v switch
        {
            null => "None",
            Undefined => "",
            string s => s,
            bool b => b ? "True" : "False",
            long i => i.ToString(CultureInfo.InvariantCulture),
            double d => d.ToString("R", CultureInfo.InvariantCulture),
            List<object?> or Dictionary<string, object?> => ToJson(v),
            _ => v.ToString() ?? "",
        };

        private static string ToJson(object? v)
        {
            static object? Plain(object? x) => x switch
            {
                Undefined => null,
                List<object?> l => l.Select(Plain).ToList(),
                Dictionary<string, object?> d => d.ToDictionary(kv => kv.Key, kv => Plain(kv.Value)),
                _ => x,
            };
            return JsonSerializer.Serialize(Plain(v));
        }

        private static string TypeName(object? v) => v switch
        {
            null => "none",
            Undefined => "an undefined value",
            string => "a string",
            long or double => "a number",
            bool => "a boolean",
            List<object?> => "a list",
            Dictionary<string, object?> => "a dict",
            _ => "a function",
        };

        /// <summary>Most items range() may produce: chat templates loop over messages, never over millions of numbers.</summary>
        private const long MaxRangeItems = 100_000;

        private static DataException Fail(int position, string message) =>
            new($"Chat template (offset {position}): {message}.");

        private sealed record BuiltinFunction(string Name);

        private sealed record BoundMethod(object? Target, string Name);
    }
}
