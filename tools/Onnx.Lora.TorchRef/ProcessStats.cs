namespace Onnx.Lora.TorchRef;

/// <summary>Peak resident set size of this process (VmHWM from /proc/self/status), in MiB.</summary>
internal static class ProcessStats
{
    /// <summary>"rss 123 MiB (anon 100, file 23), peak 456 MiB": where the memory of this process is now.</summary>
    public static string Snapshot()
    {
        var kb = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            if (colon > 0 && line.EndsWith(" kB", StringComparison.Ordinal))
            {
                kb[line[..colon]] = long.Parse(line[(colon + 1)..^3].Trim(), System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        long M(string key) => kb.GetValueOrDefault(key) / 1024;
        return $"rss {M("VmRSS")} MiB (anon {M("RssAnon")}, file {M("RssFile")}), peak {M("VmHWM")} MiB, managed heap {GC.GetTotalMemory(false) >> 20} MiB";
    }

    public static double PeakRssMiB()
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                string kb = line["VmHWM:".Length..].Trim().Split(' ')[0];
                return long.Parse(kb, System.Globalization.CultureInfo.InvariantCulture) / 1024.0;
            }
        }

        return double.NaN;
    }
}
