using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Onnx.Lora.Ir.IO;

/// <summary>What a path or an open handle is: its kind, its identity (device + inode) and its size.</summary>
/// <param name="Kind">Regular file, directory, FIFO, device...</param>
/// <param name="Device">Device number (major &lt;&lt; 32 | minor); 0 where the platform does not say.</param>
/// <param name="Inode">Inode number; 0 where the platform does not say.</param>
/// <param name="Size">Size in bytes (regular files).</param>
public readonly record struct FileFacts(FileKind Kind, ulong Device, ulong Inode, long Size)
{
    /// <summary>Whether the identity is known (Linux); without it, callers compare resolved paths.</summary>
    public bool HasIdentity => Inode != 0;

    /// <summary>Whether both name the same file (same device and inode), as <c>cp</c>'s same-file check decides.</summary>
    public bool IsSameFile(FileFacts other) => HasIdentity && Device == other.Device && Inode == other.Inode;
}

/// <summary>The kind of a file system entry.</summary>
public enum FileKind
{
    /// <summary>A regular file.</summary>
    Regular,

    /// <summary>A directory.</summary>
    Directory,

    /// <summary>A FIFO (named pipe).</summary>
    Fifo,

    /// <summary>A character device (/dev/zero, a terminal).</summary>
    CharacterDevice,

    /// <summary>A block device.</summary>
    BlockDevice,

    /// <summary>A socket.</summary>
    Socket,

    /// <summary>A symbolic link (only when links are not followed).</summary>
    Link,
}

/// <summary>
/// The few POSIX calls .NET does not expose: <c>statx</c> (kind and device + inode), <c>realpath</c> (every link and
/// <c>..</c> resolved by the kernel's own rules) and a non-blocking <c>open</c> (a FIFO must not hang the reader).
/// </summary>
/// <remarks>
/// NOTE: statx's struct layout is the same on every Linux architecture (unlike struct stat), so one declaration serves
/// x64 and arm64. Other platforms fall back to what <see cref="FileInfo"/> can tell.
/// </remarks>
internal static partial class NativeFile
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const int AtEmptyPath = 0x1000;
    private const uint StatxBasicStats = 0x7ff;
    private const int ORdOnly = 0;
    private const int ONonBlock = 0x800;
    private const int OCloExec = 0x80000;
    private const int ORdWr = 2;
    private const int OCreat = 0x40;
    private const int LockExclusive = 2;
    private const int LockNonBlocking = 4;
    private const int EWouldBlock = 11;

    /// <summary>Kind, identity and size of <paramref name="path"/>, or null when it does not exist.</summary>
    public static FileFacts? Probe(string path, bool followLinks = true)
    {
        if (!OperatingSystem.IsLinux())
        {
            return ProbePortable(path, followLinks);
        }

        Span<byte> buffer = stackalloc byte[256];
        int rc = Statx(AtFdCwd, path, followLinks ? 0 : AtSymlinkNoFollow, StatxBasicStats, ref MemoryMarshal.GetReference(buffer));
        if (rc != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            // ENOENT, ENOTDIR, ENAMETOOLONG: nothing can be there (a 100k-char location is a missing file, not an I/O fault).
            return errno is 2 or 20 or 36 ? null : throw new IOException($"Cannot read the status of '{path}' (errno {errno}).");
        }

        return Decode(buffer);
    }

    /// <summary>Kind, identity and size of the open file behind <paramref name="handle"/>.</summary>
    public static FileFacts ProbeHandle(SafeFileHandle handle, string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            return new FileFacts(FileKind.Regular, 0, 0, RandomAccess.GetLength(handle));
        }

        Span<byte> buffer = stackalloc byte[256];
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int rc = Statx((int)handle.DangerousGetHandle(), string.Empty, AtEmptyPath, StatxBasicStats, ref MemoryMarshal.GetReference(buffer));
            if (rc != 0)
            {
                throw new IOException($"Cannot read the status of '{path}' (errno {Marshal.GetLastPInvokeError()}).");
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }

        return Decode(buffer);
    }

    /// <summary>
    /// Opens <paramref name="path"/> for reading without blocking on a FIFO (O_NONBLOCK: opening a FIFO with no writer
    /// returns at once), so the caller can look at what it opened before reading from it.
    /// </summary>
    public static SafeFileHandle OpenForReading(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
        }

        int fd = Open(path, ORdOnly | ONonBlock | OCloExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw errno switch
            {
                2 or 20 => new FileNotFoundException($"'{path}' does not exist.", path),
                13 or 1 => new UnauthorizedAccessException($"Access to '{path}' is denied."),
                _ => new IOException($"Cannot open '{path}' (errno {errno})."),
            };
        }

        // NOTE: O_NONBLOCK stays set; it has no effect on regular files, the only kind callers go on to read.
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>The canonical path (every link and <c>..</c> resolved), or null when some component does not exist.</summary>
    public static string? RealPath(string path)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            return RealPathPortable(path);
        }

        IntPtr resolved = RealPathNative(path, IntPtr.Zero);
        if (resolved == IntPtr.Zero)
        {
            return null;
        }

        try
        {
            return Marshal.PtrToStringUTF8(resolved);
        }
        finally
        {
            Free(resolved);
        }
    }

    private static FileFacts Decode(ReadOnlySpan<byte> statx)
    {
        ushort mode = BitConverter.ToUInt16(statx[28..]);
        ulong inode = BitConverter.ToUInt64(statx[32..]);
        long size = BitConverter.ToInt64(statx[40..]);
        ulong device = ((ulong)BitConverter.ToUInt32(statx[136..]) << 32) | BitConverter.ToUInt32(statx[140..]);
        FileKind kind = (mode & 0xF000) switch
        {
            0x8000 => FileKind.Regular,
            0x4000 => FileKind.Directory,
            0x1000 => FileKind.Fifo,
            0x2000 => FileKind.CharacterDevice,
            0x6000 => FileKind.BlockDevice,
            0xC000 => FileKind.Socket,
            _ => FileKind.Link,
        };
        return new FileFacts(kind, device, inode, size);
    }

    private static FileFacts? ProbePortable(string path, bool followLinks)
    {
        FileSystemInfo info = Directory.Exists(path) ? new DirectoryInfo(path) : new FileInfo(path);
        if (!info.Exists)
        {
            return null;
        }

        if (!followLinks && info.LinkTarget is not null)
        {
            return new FileFacts(FileKind.Link, 0, 0, 0);
        }

        return info is FileInfo file ? new FileFacts(FileKind.Regular, 0, 0, file.Length) : new FileFacts(FileKind.Directory, 0, 0, 0);
    }

    private static string? RealPathPortable(string path)
    {
        string full = Path.GetFullPath(path);
        var info = new FileInfo(full);
        if (!info.Exists && !Directory.Exists(full))
        {
            return null;
        }

        return info.LinkTarget is null ? full : info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Statx(int dirfd, string path, int flags, uint mask, ref byte buffer);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    /// <summary>Opens (creating it if needed) a lock file and tries to take an exclusive <c>flock</c> on it without waiting.</summary>
    /// <returns>The handle holding the lock, or null when another open file holds it.</returns>
    public static SafeFileHandle? TryLockExclusive(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            try
            {
                return File.OpenHandle(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (File.Exists(path))
            {
                return null;
            }
        }

        int fd = OpenCreate(path, ORdWr | OCreat | OCloExec, 420 /* 0644 */);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw errno is 13 or 1 or 30
                ? new UnauthorizedAccessException($"Cannot create lock file '{path}' (errno {errno}).")
                : new IOException($"Cannot create lock file '{path}' (errno {errno}).");
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        if (Flock(fd, LockExclusive | LockNonBlocking) == 0)
        {
            return handle;
        }

        int error = Marshal.GetLastPInvokeError();
        handle.Dispose();
        return error == EWouldBlock ? null : throw new IOException($"Cannot lock '{path}' (errno {error}).");
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenCreate(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr RealPathNative(string path, IntPtr resolved);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void Free(IntPtr pointer);
}
