using System.Globalization;

namespace Onnx.Lora.TorchRef;

/// <summary>Minimal <c>--name value</c> option parsing for this tool's verbs.</summary>
internal sealed class Args
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    public Args(IEnumerable<string> args)
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
}
