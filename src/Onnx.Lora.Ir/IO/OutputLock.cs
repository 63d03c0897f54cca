using System.Diagnostics;
using System.Globalization;
using Microsoft.Win32.SafeHandles;

namespace Onnx.Lora.Ir.IO;

/// <summary>
/// An exclusive lock on one output, held from before its temporary file is written until after it is renamed into
/// place: git's <c>NAME.lock</c> beside the output, locked with <c>flock</c> so a killed writer never leaves it held.
/// Two writers of the same output never interleave; the second waits briefly, then fails with a message naming the
/// holder.
/// </summary>
/// <remarks>
/// NOTE: the lock file is deleted on release. A waiter may have opened the old file just before that; after taking the
/// lock it checks that the path still names the file it locked (device + inode) and retries otherwise, the usual
/// cure for the flock-and-unlink race.
/// </remarks>
public sealed class OutputLock : IDisposable
{
    /// <summary>How long a second writer waits for the first to finish before giving up.</summary>
    public static readonly TimeSpan DefaultWait = TimeSpan.FromSeconds(2);

    private readonly SafeFileHandle _handle;
    private bool _released;

    private OutputLock(string outputPath, string lockPath, SafeFileHandle handle)
    {
        OutputPath = outputPath;
        LockPath = lockPath;
        _handle = handle;
    }

    /// <summary>The output this lock guards.</summary>
    public string OutputPath { get; }

    /// <summary>The lock file, <c>OUTPUT.lock</c>.</summary>
    public string LockPath { get; }

    /// <summary>Takes the lock on <paramref name="outputPath"/>, waiting up to <paramref name="wait"/> (default <see cref="DefaultWait"/>).</summary>
    /// <exception cref="OutputConflictException">Another writer holds the lock for longer than the wait.</exception>
    public static OutputLock Acquire(string outputPath, TimeSpan? wait = null)
    {
        ArgumentNullException.ThrowIfNull(outputPath);
        string full = Path.GetFullPath(outputPath);
        string lockPath = full + ".lock";
        var clock = Stopwatch.StartNew();
        TimeSpan limit = wait ?? DefaultWait;
        while (true)
        {
            SafeFileHandle? handle = NativeFile.TryLockExclusive(lockPath);
            if (handle is not null)
            {
                if (StillNamed(lockPath, handle))
                {
                    WriteOwner(handle);
                    return new OutputLock(full, lockPath, handle);
                }

                handle.Dispose();
                continue;
            }

            if (clock.Elapsed >= limit)
            {
                throw new OutputConflictException($"Another process is writing '{outputPath}' (it holds '{lockPath}'{Owner(lockPath)}); wait for it to finish or choose another output.");
            }

            Thread.Sleep(20);
        }
    }

    /// <summary>Removes the lock file and releases the lock.</summary>
    public void Dispose()
    {
        if (_released)
        {
            return;
        }

        _released = true;
        try
        {
            // Deleted while still held: a waiter that opened this file sees it unlinked and retries on a new one.
            File.Delete(LockPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a leftover lock file is not held by anyone (flock dies with its holder).
        }

        _handle.Dispose();
    }

    private static bool StillNamed(string lockPath, SafeFileHandle handle)
    {
        FileFacts held = NativeFile.ProbeHandle(handle, lockPath);
        return !held.HasIdentity || (NativeFile.Probe(lockPath, followLinks: false) is { } now && now.IsSameFile(held));
    }

    private static void WriteOwner(SafeFileHandle handle)
    {
        byte[] pid = System.Text.Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
        RandomAccess.SetLength(handle, 0);
        RandomAccess.Write(handle, pid, 0);
    }

    private static string Owner(string lockPath)
    {
        try
        {
            using SafeFileHandle handle = NativeFile.OpenForReading(lockPath);
            Span<byte> buffer = stackalloc byte[16];
            int n = RandomAccess.Read(handle, buffer, 0);
            return int.TryParse(System.Text.Encoding.ASCII.GetString(buffer[..n]).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int pid)
                ? string.Create(CultureInfo.InvariantCulture, $", process {pid}")
                : string.Empty;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return string.Empty;
        }
    }
}
