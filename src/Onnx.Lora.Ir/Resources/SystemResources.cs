using System.Globalization;

namespace Onnx.Lora.Ir.Resources;

/// <summary>Memory a job may still use, and where that number came from.</summary>
/// <param name="Bytes">Bytes this process may still allocate.</param>
/// <param name="Source">What limited it: <c>MemAvailable</c>, <c>cgroup</c>, or the override's name.</param>
public readonly record struct MemoryBudget(long Bytes, string Source);

/// <summary>
/// What the machine can give a job, read before the job starts so that a job that cannot fit fails with numbers
/// (<see cref="ResourceLimitException"/>) instead of an out-of-memory kill or a full disk halfway through a write.
/// </summary>
/// <remarks>
/// Memory is the smallest of /proc/meminfo's MemAvailable and the headroom (limit − usage) of every memory cgroup
/// above this process (v2 <c>memory.max</c>/<c>memory.current</c>, v1 <c>memory.limit_in_bytes</c>/<c>usage_in_bytes</c>).
/// The environment variables <see cref="MemoryLimitVariable"/> and <see cref="DiskLimitVariable"/> replace the probes
/// (sizes like <c>512MiB</c>, <c>4G</c> or plain bytes), so scripts and tests can force a limit.
/// </remarks>
public static class SystemResources
{
    /// <summary>Environment variable that overrides the available memory.</summary>
    public const string MemoryLimitVariable = "ONNX_LORA_MEMORY_LIMIT";

    /// <summary>Environment variable that overrides the free disk space of every output folder.</summary>
    public const string DiskLimitVariable = "ONNX_LORA_DISK_LIMIT";

    private const double GiB = 1024.0 * 1024 * 1024;

    /// <summary>Memory this process may still allocate (<see cref="MemoryLimitVariable"/> when set).</summary>
    /// <exception cref="ResourceLimitException">The environment variable is not a size.</exception>
    public static MemoryBudget AvailableMemory()
    {
        if (Environment.GetEnvironmentVariable(MemoryLimitVariable) is { Length: > 0 } text)
        {
            return new MemoryBudget(ParseSize(text, MemoryLimitVariable), MemoryLimitVariable);
        }

        var budget = new MemoryBudget(long.MaxValue, "unknown");
        if (MemAvailable() is long available)
        {
            budget = new MemoryBudget(available, "MemAvailable");
        }

        if (CgroupHeadroom() is long headroom && headroom < budget.Bytes)
        {
            budget = new MemoryBudget(headroom, "cgroup");
        }

        return budget;
    }

    /// <summary>Free bytes for this user in the file system of <paramref name="folder"/> (<see cref="DiskLimitVariable"/> when set).</summary>
    /// <exception cref="ResourceLimitException">The environment variable is not a size.</exception>
    public static long AvailableDisk(string folder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (Environment.GetEnvironmentVariable(DiskLimitVariable) is { Length: > 0 } text)
        {
            return ParseSize(text, DiskLimitVariable);
        }

        try
        {
            string? existing = Path.GetFullPath(folder);
            while (existing is not null && !Directory.Exists(existing))
            {
                existing = Path.GetDirectoryName(existing);
            }

            return existing is null ? long.MaxValue : new DriveInfo(existing).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return long.MaxValue; // Unknown: let the write itself report a full disk.
        }
    }

    /// <summary>Throws unless <paramref name="folder"/> has room for <paramref name="bytes"/> more.</summary>
    /// <param name="folder">Where the output goes.</param>
    /// <param name="bytes">Bytes the output will take (temporaries included: they are renamed, not copied).</param>
    /// <param name="what">The output, for the message (e.g. "merged model 'out.onnx'").</param>
    /// <exception cref="ResourceLimitException">There is not enough room; the message has both numbers.</exception>
    public static void EnsureDiskSpace(string folder, long bytes, string what)
    {
        long free = AvailableDisk(folder);
        if (bytes > free)
        {
            throw new ResourceLimitException($"Writing {what} needs ~{FormatGiB(bytes)} of disk but '{folder}' has {FormatGiB(free)} free; free some space or write elsewhere.");
        }
    }

    /// <summary>Parses a size: bytes, or a number with K/M/G/T (powers of 1024; KiB, MB, GiB... accepted).</summary>
    /// <param name="text">The size.</param>
    /// <param name="name">Where it came from, for the message.</param>
    /// <exception cref="ResourceLimitException">Not a non-negative size.</exception>
    public static long ParseSize(string text, string name) =>
        TryParseSize(text, out long bytes) ? bytes
            : throw new ResourceLimitException($"{name}: '{text}' is not a size (e.g. 4GiB, 512M or a number of bytes).");

    /// <summary>Parses a size like <see cref="ParseSize"/>; false when <paramref name="text"/> is not one.</summary>
    public static bool TryParseSize(string? text, out long bytes)
    {
        bytes = 0;
        if (text is null)
        {
            return false;
        }

        string t = text.Trim();
        int end = t.Length;
        while (end > 0 && char.IsLetter(t[end - 1]))
        {
            end--;
        }

        double scale = t[end..].ToUpperInvariant() switch
        {
            "" or "B" => 1,
            "K" or "KB" or "KIB" => 1L << 10,
            "M" or "MB" or "MIB" => 1L << 20,
            "G" or "GB" or "GIB" => 1L << 30,
            "T" or "TB" or "TIB" => 1L << 40,
            _ => double.NaN,
        };
        if (double.IsNaN(scale) || !double.TryParse(t[..end], NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || value < 0 || !double.IsFinite(value))
        {
            return false;
        }

        bytes = (long)Math.Min(value * scale, long.MaxValue);
        return true;
    }

    /// <summary>Bytes as GiB with one decimal (MiB below 1 GiB), for messages.</summary>
    public static string FormatGiB(long bytes) =>
        bytes >= GiB ? string.Create(CultureInfo.InvariantCulture, $"{bytes / GiB:F1} GiB")
            : string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024):F0} MiB");

    private static long? MemAvailable()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal)
                    && long.TryParse(line["MemAvailable:".Length..].Replace("kB", "", StringComparison.Ordinal).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long kb))
                {
                    return kb * 1024;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Not Linux, or no procfs: no number from here.
        }

        return null;
    }

    // The smallest limit − usage over this process's memory cgroup and its ancestors (a parent's limit binds too).
    private static long? CgroupHeadroom()
    {
        try
        {
            if (!File.Exists("/proc/self/cgroup"))
            {
                return null;
            }

            long? best = null;
            foreach (string line in File.ReadLines("/proc/self/cgroup"))
            {
                string[] parts = line.Split(':', 3);
                if (parts.Length != 3)
                {
                    continue;
                }

                (string root, string max, string current) = parts[0] == "0" && parts[1].Length == 0
                    ? ("/sys/fs/cgroup", "memory.max", "memory.current")
                    : parts[1].Split(',').Contains("memory") ? ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes") : ("", "", "");
                if (root.Length == 0)
                {
                    continue;
                }

                for (string? dir = root + parts[2].TrimEnd('/'); dir is not null && dir.StartsWith(root, StringComparison.Ordinal); dir = Path.GetDirectoryName(dir))
                {
                    if (ReadNumber(Path.Combine(dir, max)) is long limit && limit < (1L << 60) && ReadNumber(Path.Combine(dir, current)) is long used)
                    {
                        long headroom = Math.Max(0, limit - used);
                        best = best is null ? headroom : Math.Min(best.Value, headroom);
                    }
                }
            }

            return best;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static long? ReadNumber(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        string text = File.ReadAllText(path).Trim();
        return long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v : null; // "max" → no limit
    }
}
