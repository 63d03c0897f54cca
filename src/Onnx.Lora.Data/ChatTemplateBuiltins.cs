using System.Globalization;
using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>The values a chat template computes with, and the methods, filters and tests it may call on them.</summary>
internal static class ChatTemplateBuiltins
{
    /// <summary>Jinja's undefined value: falsy, renders as "", compares unequal to everything defined.</summary>
    internal sealed class Undefined
    {
        public static readonly Undefined Instance = new();
    }

    internal static object? IndexInto(object? target, object? key, int position) => (target, key) switch
    {
        (Dictionary<string, object?> d, string k) => d.TryGetValue(k, out object? v) ? v : Undefined.Instance,
        (List<object?> l, long i) => (i < 0 ? l.Count + i : i) is long j && j >= 0 && j < l.Count ? l[(int)j] : Undefined.Instance,
        (string s, long i) => (i < 0 ? s.Length + i : i) is long j && j >= 0 && j < s.Length ? s[(int)j].ToString() : Undefined.Instance,
        (Undefined, _) => Undefined.Instance,
        _ => throw Fail(position, $"cannot index {TypeName(target)} with {TypeName(key)}"),
    };

    // A slice of a string is a string, of a list a list: the analyzer's single-type suggestion (CA1859) does not apply.
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Performance", "CA1859", Justification = "Returns a string or a list.")]
    internal static object? SliceOf(object? target, object? start, object? stop, int position)
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

    internal static object? Invoke(object? callee, List<object?> args, List<(string Name, object? Value)> kwargs, int position)
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

    internal static object? ApplyFilter(string name, object? value, List<object?> args, int position) => name switch
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

    internal static bool ApplyTest(string name, object? value, int position) => name switch
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

    internal static bool AreEqual(object? a, object? b) => (a, b) switch
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

    internal static bool Truthy(object? v) => v switch
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

    internal static string ToText(object? v) => v switch
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

    internal static string ToJson(object? v)
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

    internal static string TypeName(object? v) => v switch
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
    internal const long MaxRangeItems = 100_000;

    internal static DataException Fail(int position, string message) =>
        new($"Chat template (offset {position}): {message}.");

    internal sealed record BuiltinFunction(string Name);

    internal sealed record BoundMethod(object? Target, string Name);
}
