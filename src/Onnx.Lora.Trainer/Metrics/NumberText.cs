using System.Globalization;

namespace Onnx.Lora.Trainer;

/// <summary>
/// Numbers for people: plain decimals (<c>0.0000552</c>), never .NET's <c>5.52E-05</c>, so learning rates read the
/// same in help, progress lines, the summary and docs.
/// </summary>
public static class NumberText
{
    /// <summary><paramref name="value"/> rounded to <paramref name="significant"/> significant digits as a plain decimal, trailing zeros dropped.</summary>
    public static string Plain(double value, int significant = 6)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(significant, 1);
        if (value == 0 || !double.IsFinite(value))
        {
            return value == 0 ? "0" : value.ToString(CultureInfo.InvariantCulture);
        }

        int magnitude = (int)Math.Floor(Math.Log10(Math.Abs(value)));
        int decimals = Math.Clamp(significant - 1 - magnitude, 0, 20);
        string text = value.ToString("F" + decimals.ToString(CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
        return text.Contains('.', StringComparison.Ordinal) ? text.TrimEnd('0').TrimEnd('.') : text;
    }
}
