using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Writes files atomically: content goes to a temporary file in the destination folder, which is renamed over
/// the destination only after it is complete and flushed. A failure deletes the temporary file and leaves any
/// previous destination file untouched; a process killed mid-write leaves only a hidden temporary file, never a
/// partial file under the final name.
/// </summary>
public static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> through <paramref name="write"/> atomically.</summary>
    public static void Write(string path, Action<FileStream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        using var batch = new AtomicFileBatch();
        batch.Add(path, write);
        batch.Commit();
    }

    /// <summary>Writes all bytes to <paramref name="path"/> atomically.</summary>
    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        byte[] copy = bytes.ToArray();
        Write(path, s => s.Write(copy));
    }

    /// <summary>Writes text (UTF-8) to <paramref name="path"/> atomically.</summary>
    public static void WriteAllText(string path, string text) =>
        WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    /// <summary>
    /// A hidden staging folder name in the same scheme as temporary files (<c>.PREFIX.PID-GUID.tmp</c>), so
    /// <see cref="RemoveStaleTemporaryFolders"/> can tell a killed writer's leftovers from a live writer's.
    /// </summary>
    public static string TemporaryFolderName(string prefix)
    {
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        return string.Create(CultureInfo.InvariantCulture, $".{prefix}.{Environment.ProcessId}-{Guid.NewGuid():N}.tmp");
    }

    /// <summary>Deletes the staging folders named by <see cref="TemporaryFolderName"/> in <paramref name="dir"/> whose process no longer runs.</summary>
    public static void RemoveStaleTemporaryFolders(string dir, string prefix)
    {
        ArgumentNullException.ThrowIfNull(dir);
        ArgumentException.ThrowIfNullOrEmpty(prefix);
        if (!Directory.Exists(dir))
        {
            return;
        }

        foreach (string stale in Directory.EnumerateDirectories(dir, $".{prefix}.*.tmp"))
        {
            if (IsStale(Path.GetFileName(stale)[(prefix.Length + 2)..^4]))
            {
                try
                {
                    Directory.Delete(stale, recursive: true);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Best effort: the next run tries again.
                }
            }
        }
    }

    // "PID-GUID" of a writer that no longer runs.
    internal static bool IsStale(string pidAndGuid)
    {
        int dash = pidAndGuid.IndexOf('-', StringComparison.Ordinal);
        return dash > 0 && pidAndGuid.Length - dash - 1 == 32
            && int.TryParse(pidAndGuid.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)
            && pid != Environment.ProcessId && !IsRunning(pid);
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            return !process.HasExited;
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            return false;
        }
    }
}

/// <summary>
/// Several files written as one: each is written to a temporary file, and all are renamed into place in the order
/// they were added once every one is complete. Add the files that others refer to first and the entry point last
/// (data files, then the model that refers to them): the entry point's previous version is removed before any rename,
/// so a process killed during the renames leaves no entry point rather than a new data file beside an old model.
/// </summary>
/// <remarks>
/// Temporary files are named <c>.NAME.PID-GUID.tmp</c> beside NAME. A process killed while writing leaves one behind;
/// the next write of NAME deletes those whose process is gone (never a live writer's).
/// Each final name is reserved before anything is written: it must not be an input of the running verb
/// (<see cref="InputScope"/>), and its <see cref="OutputLock"/> is held until the batch ends, so two writers of the
/// same files never interleave their renames (one writer's model beside another's data file).
/// </remarks>
public sealed class AtomicFileBatch : IDisposable
{
    private readonly List<(string Temp, string Final)> _pending = [];
    private readonly Dictionary<string, OutputLock> _locks = new(StringComparer.Ordinal);
    private bool _committed;

    /// <summary>Test hook: runs after each rename of a commit (tests force other writers to interleave here).</summary>
    internal static Action<string>? BetweenRenames { get; set; }

    /// <summary>
    /// Reserves final names before the work that produces them: refuses a name that is an input of the running verb and
    /// takes its lock (<see cref="OutputLock"/>). <see cref="Add"/> reserves its own name; reserving every name first
    /// makes a refusal come before any work.
    /// </summary>
    /// <exception cref="OutputConflictException">A name is an input, or another process is writing it.</exception>
    public void Reserve(params IEnumerable<string> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        foreach (string path in paths)
        {
            string full = Path.GetFullPath(path);
            if (_locks.ContainsKey(full))
            {
                continue;
            }

            InputScope.EnsureNotInput(full);
            // A folder that cannot hold the output (read-only, under a regular file) fails here, naming the output.
            OutputPaths.EnsureWritableShape(full);
            OutputPaths.Guard(full, null, () =>
            {
                Directory.CreateDirectory(Path.GetDirectoryName(full) ?? ".");
                _locks[full] = OutputLock.Acquire(full);
            });
        }
    }

    /// <summary>Writes the content of <paramref name="path"/> to a temporary file now.</summary>
    public void Add(string path, Action<FileStream> write)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? ".";
        Reserve(full);
        string temp = Path.Combine(dir, string.Create(CultureInfo.InvariantCulture, $".{Path.GetFileName(full)}.{Environment.ProcessId}-{Guid.NewGuid():N}.tmp"));
        // A failed write (disk full, read-only folder...) names the file the user asked for, never the temporary.
        OutputPaths.Guard(full, temp, () =>
        {
            Directory.CreateDirectory(dir);
            RemoveStaleTemporaries(dir, Path.GetFileName(full));
            _pending.Add((temp, full));
            using var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
            write(stream);
            stream.Flush(flushToDisk: true);
        });
    }

    /// <summary>Renames every temporary file into place (the last one added last, its old version removed first).</summary>
    public void Commit()
    {
        foreach ((_, string final) in _pending)
        {
            // Again at the last moment: an input read after the reservation (or a link swapped in since) still counts.
            InputScope.EnsureNotInput(final);
        }

        if (_pending.Count > 1)
        {
            // NOTE: without this, a kill between the renames would leave the new data file under the old model's
            // name pairing (offsets of one model applied to another's bytes), which loads without any error.
            OutputPaths.Guard(_pending[^1].Final, null, () => File.Delete(_pending[^1].Final));
        }

        foreach ((string temp, string final) in _pending)
        {
            OutputPaths.Guard(final, temp, () => File.Move(temp, final, overwrite: true));
            BetweenRenames?.Invoke(final);
        }

        _committed = true;
    }

    /// <summary>Deletes temporary files that were not committed and releases the output locks.</summary>
    public void Dispose()
    {
        if (!_committed)
        {
            foreach ((string temp, _) in _pending)
            {
                TryDelete(temp);
            }
        }

        foreach (OutputLock held in _locks.Values)
        {
            held.Dispose();
        }

        _locks.Clear();
    }

    /// <summary>Whether <paramref name="fileName"/> is a temporary file of this writer (for tools that list a folder).</summary>
    public static bool IsTemporary(string fileName)
    {
        ArgumentNullException.ThrowIfNull(fileName);
        return fileName.StartsWith('.') && fileName.EndsWith(".tmp", StringComparison.Ordinal);
    }

    private static void RemoveStaleTemporaries(string dir, string fileName)
    {
        foreach (string stale in Directory.EnumerateFiles(dir, $".{fileName}.*.tmp"))
        {
            // ".NAME.PID-GUID.tmp": only temporaries of a process that no longer runs are stale.
            if (AtomicFile.IsStale(Path.GetFileName(stale)[(fileName.Length + 2)..^4]))
            {
                TryDelete(stale);
            }
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: the temp name is unique and hidden, so a leftover never shadows real output.
        }
    }
}
