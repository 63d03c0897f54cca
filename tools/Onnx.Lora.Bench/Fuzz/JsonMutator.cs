using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>
/// JSON-aware mutations: the document is parsed with System.Text.Json, one value slot is picked (half the time by a
/// walk from the root, so top-level fields get as much attention as the hundreds of vocabulary entries), and then it
/// changes type, is deleted, duplicated (array element or object key), deeply nested, replaced by a boundary number, a
/// NaN-like string, a very long string, a target-specific value, or raw text System.Text.Json would never write (invalid
/// UTF-8, NaN literals, 400-digit numbers); or the document is truncated. Unparseable input falls back to
/// <see cref="ByteMutator"/>.
/// </summary>
public static class JsonMutator
{
    // Placeholders spliced out after serialization: raw payloads cannot be represented by a JsonNode.
    private const string MarkerKey = "@@fuzz-key-5c1e@@";
    private const string MarkerValue = "@@fuzz-value-5c1e@@";

    private static readonly JsonSerializerOptions s_write = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, MaxDepth = 256 };

    private static readonly string[] s_numbers =
    [
        "0", "-0", "1", "-1", "2", "0.5", "-0.5", "1e-320", "1e308", "-1e308", "1e20", "127", "128", "255", "256", "65535", "65536",
        "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967296", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "18446744073709551616", "1.7976931348623157e308", "123456789012345678901234567890",
    ];

    private static readonly string[] s_rawValues =
    [
        "NaN", "-NaN", "Infinity", "-Infinity", "nan", "inf", "1e400", "-1e400", "00", "01", "+1", ".5", "1.", "0x10", "undefined",
        "'single'", "[1,]", "{\"a\":1,}", "/*c*/1", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"a\\u0000b\"", "\"\\x41\"", "tru", "nul",
    ];

    // Invalid UTF-8 placed inside a string literal: stray continuation, lone lead byte, overlong NUL, encoded surrogate, 0xFF.
    private static readonly byte[][] s_badUtf8 = [[0x80], [0xC3], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0xFF, 0xFE], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]];

    private static readonly string[] s_nanLike = ["NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "1e999", "", " ", "null", "true", "0x1F", "١٢٣"];

    /// <summary>One mutation of the JSON document <paramref name="document"/> (a new array).</summary>
    /// <param name="document">UTF-8 JSON text.</param>
    /// <param name="rng">The iteration's generator.</param>
    /// <param name="interesting">Target-specific JSON values (texts) worth trying anywhere: type names, regexes, templates.</param>
    /// <param name="fragments">Target-specific text spliced into string values (template tags, special tokens).</param>
    public static byte[] Mutate(byte[] document, Random rng, IReadOnlyList<string> interesting, IReadOnlyList<string> fragments)
    {
        ArgumentNullException.ThrowIfNull(document);
        ArgumentNullException.ThrowIfNull(rng);
        ArgumentNullException.ThrowIfNull(interesting);
        ArgumentNullException.ThrowIfNull(fragments);
        JsonNode? root = TryParse(document);
        if (root is null || rng.Next(40) == 0)
        {
            return rng.Next(3) == 0 && document.Length > 0 ? document.AsSpan(0, rng.Next(document.Length)).ToArray() : ByteMutator.Mutate(document, rng);
        }

        try
        {
            return MutateTree(root, rng, interesting, fragments);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or JsonException)
        {
            // A string the tree cannot re-serialize (a lone surrogate escape, invalid UTF-8 left by an earlier mutation).
            return ByteMutator.Mutate(document, rng);
        }
    }

    private static byte[] MutateTree(JsonNode root, Random rng, IReadOnlyList<string> interesting, IReadOnlyList<string> fragments)
    {
        var holder = new JsonArray(root); // a parent for the root, so replacing the root is like replacing any slot
        Slot slot = rng.Next(2) == 0 ? Walk(holder, rng) : Uniform(holder, rng);
        JsonNode? current = slot.Get();
        byte[]? raw = null;
        switch (rng.Next(16))
        {
            case 0:
                slot.Set(TypeChange(current, rng));
                break;
            case 1:
                if (!slot.Remove())
                {
                    slot.Set(null);
                }

                break;
            case 2:
                if (slot.Parent is JsonArray array && !ReferenceEquals(array, holder))
                {
                    array.Insert(slot.Index, current?.DeepClone());
                }
                else if (slot.Parent is JsonObject obj)
                {
                    // A duplicated key cannot live in a JsonObject: a marker pair is replaced by the raw "key": value text.
                    obj[MarkerKey] = MarkerValue;
                    JsonNode? value = rng.Next(2) == 0 ? current : TypeChange(current, rng);
                    raw = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(slot.Name!, s_write) + ":" + (value?.ToJsonString(s_write) ?? "null"));
                }

                break;
            case 3:
                slot.Set(MarkerValue);
                raw = Encoding.UTF8.GetBytes(Nested(rng));
                break;
            case 4:
                slot.Set(JsonNode.Parse(s_numbers[rng.Next(s_numbers.Length)]));
                break;
            case 5:
                slot.Set(s_nanLike[rng.Next(s_nanLike.Length)]);
                break;
            case 6:
                slot.Set(LongString(current, rng, fragments));
                break;
            case 7:
                slot.Set(MarkerValue);
                raw = Encoding.UTF8.GetBytes(s_rawValues[rng.Next(s_rawValues.Length)]);
                break;
            case 8:
            {
                slot.Set(MarkerValue);
                string text = current is JsonValue v && v.TryGetValue(out string? s) ? s : "x";
                int at = rng.Next(text.Length + 1);
                byte[] bad = s_badUtf8[rng.Next(s_badUtf8.Length)];
                raw = [.. Encoding.UTF8.GetBytes(JsonSerializer.Serialize(text[..at], s_write)[..^1]), .. bad, .. Encoding.UTF8.GetBytes(JsonSerializer.Serialize(text[at..], s_write)[1..])];
                break;
            }

            case 9:
                slot.Set(SwapInSubtree(holder, rng));
                break;
            case 10:
            case 11:
                if (current is JsonValue sv && sv.TryGetValue(out string? str))
                {
                    slot.Set(Splice(str, rng, fragments));
                }
                else if (interesting.Count > 0)
                {
                    slot.Set(JsonNode.Parse(interesting[rng.Next(interesting.Count)]));
                }

                break;
            case 12:
            case 13:
                if (interesting.Count > 0)
                {
                    slot.Set(JsonNode.Parse(interesting[rng.Next(interesting.Count)]));
                }

                break;
            case 14:
                if (current is JsonValue nv && nv.GetValueKind() == JsonValueKind.Number && nv.TryGetValue(out double d))
                {
                    slot.Set(JsonNode.Parse(rng.Next(3) switch
                    {
                        0 => (-d).ToString("R", System.Globalization.CultureInfo.InvariantCulture),
                        1 => ByteMutator.InterestingInteger(rng, (long)Math.Clamp(d, long.MinValue, long.MaxValue)).ToString(System.Globalization.CultureInfo.InvariantCulture),
                        _ => (d + 0.5).ToString("R", System.Globalization.CultureInfo.InvariantCulture),
                    }));
                }
                else
                {
                    slot.Set(TypeChange(current, rng));
                }

                break;
            default:
            {
                byte[] whole = Serialize(holder[0], raw);
                return whole.Length == 0 ? whole : whole.AsSpan(0, rng.Next(whole.Length)).ToArray();
            }
        }

        return Serialize(holder.Count > 0 ? holder[0] : null, raw);
    }

    /// <summary>Parses <paramref name="document"/> into a fully materialized tree, or null when it is not JSON a JsonNode can hold.</summary>
    public static JsonNode? TryParse(byte[] document)
    {
        ArgumentNullException.ThrowIfNull(document);
        try
        {
            JsonNode? root = JsonNode.Parse(document, documentOptions: new JsonDocumentOptions { MaxDepth = 256 });
            Materialize(root); // a duplicated key throws only when an object's properties are first touched
            return root;
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            return null;
        }
    }

    private static void Materialize(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (KeyValuePair<string, JsonNode?> p in o)
                {
                    Materialize(p.Value);
                }

                break;
            case JsonArray a:
                foreach (JsonNode? item in a)
                {
                    Materialize(item);
                }

                break;
        }
    }

    private static byte[] Serialize(JsonNode? root, byte[]? raw)
    {
        string text = root?.ToJsonString(s_write) ?? "null";
        if (raw is not null)
        {
            string pair = JsonSerializer.Serialize(MarkerKey, s_write) + ":" + JsonSerializer.Serialize(MarkerValue, s_write);
            int at = text.IndexOf(pair, StringComparison.Ordinal);
            string target = at >= 0 ? pair : JsonSerializer.Serialize(MarkerValue, s_write);
            at = at >= 0 ? at : text.IndexOf(target, StringComparison.Ordinal);
            if (at >= 0)
            {
                return [.. Encoding.UTF8.GetBytes(text[..at]), .. raw, .. Encoding.UTF8.GetBytes(text[(at + target.Length)..])];
            }
        }

        return Encoding.UTF8.GetBytes(text);
    }

    private static JsonNode? TypeChange(JsonNode? current, Random rng) => rng.Next(10) switch
    {
        0 => null,
        1 => JsonValue.Create(rng.Next(2) == 0),
        2 => JsonValue.Create(rng.Next(-2, 3)),
        3 => JsonValue.Create(""),
        4 => JsonValue.Create(current?.ToJsonString() ?? "null"),
        5 => new JsonArray(),
        6 => new JsonObject(),
        7 => new JsonArray(current?.DeepClone()),
        8 => new JsonObject { ["type"] = current?.DeepClone() },
        _ => JsonValue.Create(1.5),
    };

    private static string Nested(Random rng)
    {
        int depth = rng.Next(4) switch { 0 => 65, 1 => 257, 2 => 1100, _ => 20_000 };
        return rng.Next(2) == 0
            ? new string('[', depth) + new string(']', depth)
            : string.Concat(Enumerable.Repeat("{\"a\":", depth)) + "1" + new string('}', depth);
    }

    private static string LongString(JsonNode? current, Random rng, IReadOnlyList<string> fragments)
    {
        string unit = rng.Next(3) switch
        {
            0 => current is JsonValue v && v.TryGetValue(out string? s) && s.Length > 0 ? s : "a",
            1 when fragments.Count > 0 => fragments[rng.Next(fragments.Count)],
            _ => "é▁日\U0001F600 a",
        };
        int chars = rng.Next(4) switch { 0 => 300, 1 => 4_096, 2 => 65_536, _ => 1 << 20 };
        var sb = new StringBuilder(chars + unit.Length);
        while (sb.Length < chars)
        {
            sb.Append(unit);
        }

        return sb.ToString();
    }

    private static string Splice(string text, Random rng, IReadOnlyList<string> fragments)
    {
        int at = rng.Next(text.Length + 1);
        switch (rng.Next(5))
        {
            case 0:
                // Cut a piece out (an unbalanced template tag, half a special token).
                int length = rng.Next(Math.Max(1, Math.Min(32, text.Length - at)) + 1);
                return text[..at] + text[Math.Min(text.Length, at + length)..];
            case 1:
                return text[..at] + rng.Next(4) switch { 0 => "\0", 1 => "\ud800", 2 => "\r\n", _ => "\u2581" } + text[at..];
            default:
                return fragments.Count == 0 ? text + text : text[..at] + fragments[rng.Next(fragments.Count)] + text[at..];
        }
    }

    private static JsonNode? SwapInSubtree(JsonArray holder, Random rng)
    {
        JsonNode? donor = Uniform(holder, rng).Get();
        return donor?.DeepClone();
    }

    private static Slot Walk(JsonArray holder, Random rng)
    {
        var slot = new Slot(holder, null, 0);
        while (rng.Next(4) != 0)
        {
            switch (slot.Get())
            {
                case JsonObject o when o.Count > 0:
                    slot = new Slot(o, o.ElementAt(rng.Next(o.Count)).Key, -1);
                    break;
                case JsonArray a when a.Count > 0:
                    slot = new Slot(a, null, rng.Next(a.Count));
                    break;
                default:
                    return slot;
            }
        }

        return slot;
    }

    private static Slot Uniform(JsonArray holder, Random rng)
    {
        var slots = new List<Slot>();
        Collect(holder, slots);
        return slots[rng.Next(slots.Count)];
    }

    private static void Collect(JsonNode container, List<Slot> slots)
    {
        if (container is JsonObject o)
        {
            foreach (KeyValuePair<string, JsonNode?> p in o)
            {
                slots.Add(new Slot(o, p.Key, -1));
                if (p.Value is JsonObject or JsonArray)
                {
                    Collect(p.Value, slots);
                }
            }
        }
        else if (container is JsonArray a)
        {
            for (int i = 0; i < a.Count; i++)
            {
                slots.Add(new Slot(a, null, i));
                if (a[i] is JsonObject or JsonArray)
                {
                    Collect(a[i]!, slots);
                }
            }
        }
    }

    /// <summary>A place holding a value: a property of an object or an element of an array.</summary>
    private readonly record struct Slot(JsonNode Parent, string? Name, int Index)
    {
        public JsonNode? Get() => Parent is JsonObject o ? o[Name!] : ((JsonArray)Parent)[Index];

        public void Set(JsonNode? value)
        {
            if (value?.Parent is not null)
            {
                value = value.DeepClone();
            }

            if (Parent is JsonObject o)
            {
                o[Name!] = value;
            }
            else
            {
                ((JsonArray)Parent)[Index] = value;
            }
        }

        public bool Remove()
        {
            if (Parent is JsonObject o)
            {
                return o.Remove(Name!);
            }

            var a = (JsonArray)Parent;
            if (a.Parent is null)
            {
                return false; // the holder: its only element is the document itself
            }

            a.RemoveAt(Index);
            return true;
        }
    }
}
