using System.Globalization;

namespace Onnx.Lora.Tools;

/// <summary>
/// <c>--name value</c> and <c>--flag</c> options of the developer tools' verbs (bench, torch reference); one source file
/// compiled into both. The product CLI parses with System.CommandLine instead.
/// </summary>
public sealed class ToolArgs
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    public ToolArgs(IEnumerable<string> args)
    {
        string? key = null;
        foreach (string a in args)
        {
            if (a.StartsWith("--", StringComparison.Ordinal))
            {
                if (key is not null)
                {
                    _values[key] = "true";
                }

                key = a[2..];
            }
            else if (key is not null)
            {
                _values[key] = a;
                key = null;
            }
            else
            {
                throw new ArgumentException($"Unexpected argument '{a}'.");
            }
        }

        if (key is not null)
        {
            _values[key] = "true";
        }
    }

    public string Str(string name, string? fallback = null) =>
        _values.TryGetValue(name, out string? v) ? v : fallback ?? throw new ArgumentException($"Option --{name} is required.");

    public string? Maybe(string name) => _values.GetValueOrDefault(name);

    public int Int(string name, int fallback) => _values.TryGetValue(name, out string? v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;

    public double Double(string name, double fallback) => _values.TryGetValue(name, out string? v) ? double.Parse(v, CultureInfo.InvariantCulture) : fallback;

    public bool Flag(string name) => _values.TryGetValue(name, out string? v) && v != "false";

    public long Long(string name, long fallback) => _values.TryGetValue(name, out string? v) ? long.Parse(v, CultureInfo.InvariantCulture) : fallback;

    /// <summary>The first option given that is not among <paramref name="known"/> (without its dashes), or null.</summary>
    public string? FirstUnknown(params string[] known) => _values.Keys.FirstOrDefault(k => !known.Contains(k, StringComparer.Ordinal));
}
