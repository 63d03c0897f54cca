namespace Onnx.Lora.TorchRef;

/// <summary>Peak resident set size of this process (VmHWM from /proc/self/status), in MiB.</summary>
internal static class ProcessStats
{
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
