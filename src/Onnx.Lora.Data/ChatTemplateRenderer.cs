using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;

namespace Onnx.Lora.Data;

using static ChatTemplateBuiltins;
using static ChatTemplateSyntax;

/// <summary>Renders parsed template nodes: scopes, loops, <c>set</c>, and the spans that carry loss.</summary>
internal sealed class ChatTemplateRenderer(Dictionary<string, object?> globals)
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
}
