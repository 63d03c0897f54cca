using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Onnx.Lora.TorchRef;

/// <summary>Time per op type from an ORT profile (SessionOptions.EnableProfiling; chrome-trace JSON of kernel events).</summary>
internal static class OrtProfileSummary
{
    public sealed record OpTypeTime(string OpType, double Microseconds, int Calls);

    public static IReadOnlyList<OpTypeTime> Read(string profileJson)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(profileJson));
        var byOp = new Dictionary<string, (double Us, int Calls)>(StringComparer.Ordinal);
        foreach (JsonElement e in doc.RootElement.EnumerateArray())
        {
            if (e.TryGetProperty("cat", out JsonElement cat) && cat.GetString() == "Node"
                && e.TryGetProperty("name", out JsonElement name) && name.GetString()?.EndsWith("_kernel_time", StringComparison.Ordinal) == true
                && e.TryGetProperty("args", out JsonElement args) && args.TryGetProperty("op_name", out JsonElement op))
            {
                string key = op.GetString() ?? "?";
                (double us, int calls) = byOp.GetValueOrDefault(key);
                byOp[key] = (us + e.GetProperty("dur").GetDouble(), calls + 1);
            }
        }

        return byOp.Select(kv => new OpTypeTime(kv.Key, kv.Value.Us, kv.Value.Calls)).OrderByDescending(o => o.Microseconds).ToList();
    }

    public static string Format(IReadOnlyList<OpTypeTime> ops, int top = 15)
    {
        double total = ops.Sum(o => o.Microseconds);
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"ORT kernel time by op type (total {total / 1000:F1} ms):");
        foreach (OpTypeTime o in ops.Take(top))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"  {o.OpType,-28} {o.Microseconds / 1000,9:F2} ms {100 * o.Microseconds / total,6:F1}%  {o.Calls,7} calls");
        }

        return sb.ToString();
    }
}
