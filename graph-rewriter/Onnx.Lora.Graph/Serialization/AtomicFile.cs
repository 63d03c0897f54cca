namespace Onnx.Lora.Graph.Serialization;

/// <summary>
/// Writes files atomically: content goes to a temporary file in the destination folder, which is renamed over
/// the destination only after it is complete and flushed. A failure deletes the temporary file and leaves any
/// previous destination file untouched.
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
}

/// <summary>
/// Several files written as one: each is written to a temporary file, and all are renamed into place in the order
/// they were added once every one is complete (add data files before the model that refers to them).
/// </summary>
public sealed class AtomicFileBatch : IDisposable
{
    private readonly List<(string Temp, string Final)> _pending = [];
    private bool _committed;

    /// <summary>Writes the content of <paramref name="path"/> to a temporary file now.</summary>
    public void Add(string path, Action<FileStream> write)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full) ?? ".";
        Directory.CreateDirectory(dir);
        string temp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        _pending.Add((temp, full));
        using var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        write(stream);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>Renames every temporary file into place.</summary>
    public void Commit()
    {
        foreach ((string temp, string final) in _pending)
        {
            File.Move(temp, final, overwrite: true);
        }

        _committed = true;
    }

    /// <summary>Deletes temporary files that were not committed.</summary>
    public void Dispose()
    {
        if (_committed)
        {
            return;
        }

        foreach ((string temp, _) in _pending)
        {
            try
            {
                File.Delete(temp);
            }
            catch (IOException)
            {
                // Best effort: the temp name is unique and hidden, so a leftover never shadows real output.
            }
        }
    }
}
