using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace Onnx.Lora.Data;

using static ChatTemplateSyntax;

/// <summary>Tokenizes and parses one Jinja expression (a <c>{{ }}</c> body or a statement's operand), by precedence climbing.</summary>
internal sealed class ChatExpressionParser
{
    private static readonly string[] s_operators = ["==", "!=", "<=", ">=", "//", "**", "(", ")", "[", "]", "{", "}", ",", ":", ".", "|", "+", "-", "*", "/", "%", "~", "<", ">", "="];
    private readonly List<(string Kind, string Text, int Pos)> _tokens = [];
    private readonly int _base;
    private readonly ChatTemplateParser _owner;
    private int _i;

    public ChatExpressionParser(string text, int basePosition, ChatTemplateParser owner)
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
