using Microsoft.Win32.SafeHandles;

namespace Onnx.Lora.Ir.IO;

/// <summary>
/// Opens input files the one safe way: a non-blocking open (a FIFO never hangs the reader), a check that what was
/// opened is a regular file (not /dev/zero, a FIFO, a socket or a directory), its size known and bounded before a byte
/// is read, and its identity recorded in the current <see cref="InputScope"/> so no output of the same verb can
/// overwrite it.
/// </summary>
/// <remarks>
/// Every failure is raised through the caller's <c>error</c> factory, so each reader keeps its own exception type (and
/// with it its exit code) and its messages name the file the user gave.
/// </remarks>
public static class InputFile
{
    /// <summary>Opens <paramref name="path"/> for reading; the stream's length is the file's size (at most <paramref name="maxBytes"/>).</summary>
    /// <param name="path">The file as the user named it (used in messages).</param>
    /// <param name="what">What the file is, for messages ("Adapter file", "Tokenizer").</param>
    /// <param name="maxBytes">Largest size accepted.</param>
    /// <param name="error">Makes the reader's own exception from a message.</param>
    /// <param name="bufferSize">Read buffer of the stream.</param>
    public static FileStream OpenRead(string path, string what, long maxBytes, Func<string, Exception> error, int bufferSize = 1 << 16)
    {
        SafeFileHandle handle = OpenHandle(path, what, maxBytes, error, out _);
        return new FileStream(handle, FileAccess.Read, bufferSize);
    }

    /// <summary>Reads all of <paramref name="path"/> (at most <paramref name="maxBytes"/>) after the checks of <see cref="OpenRead"/>.</summary>
    /// <param name="path">The file as the user named it.</param>
    /// <param name="what">What the file is, for messages.</param>
    /// <param name="maxBytes">Largest size accepted (at most <see cref="Array.MaxLength"/>).</param>
    /// <param name="error">Makes the reader's own exception from a message.</param>
    /// <param name="tooLargeReason">Why the limit is what it is, for the message on a larger file.</param>
    public static byte[] ReadAllBytes(string path, string what, long maxBytes, Func<string, Exception> error, string? tooLargeReason = null)
    {
        maxBytes = Math.Min(maxBytes, Array.MaxLength);
        using SafeFileHandle handle = OpenHandle(path, what, maxBytes, error, out FileFacts facts, tooLargeReason);
        byte[] bytes = GC.AllocateUninitializedArray<byte>((int)facts.Size);
        int done = 0;
        try
        {
            while (done < bytes.Length)
            {
                int got = RandomAccess.Read(handle, bytes.AsSpan(done), done);
                if (got <= 0)
                {
                    throw error($"{what} '{path}' ended after {done:N0} of {bytes.Length:N0} bytes (it changed while being read).");
                }

                done += got;
            }
        }
        catch (IOException e)
        {
            throw error($"Cannot read {Lower(what)} '{path}': {e.Message}");
        }

        return bytes;
    }

    /// <summary>Reads <paramref name="path"/> as UTF-8 text (a BOM is skipped) after the checks of <see cref="OpenRead"/>.</summary>
    public static string ReadAllText(string path, string what, long maxBytes, Func<string, Exception> error, string? tooLargeReason = null)
    {
        byte[] bytes = ReadAllBytes(path, what, maxBytes, error, tooLargeReason);
        ReadOnlySpan<byte> span = bytes;
        return System.Text.Encoding.UTF8.GetString(span.StartsWith("\uFEFF"u8) ? span[3..] : span);
    }

    /// <summary>
    /// The checks of <see cref="OpenRead"/> for a reader that opens the file itself (a memory map): refuses a file that
    /// is not regular or is larger than <paramref name="maxBytes"/>, records it as an input, and returns its facts.
    /// </summary>
    public static FileFacts Check(string path, string what, long maxBytes, Func<string, Exception> error)
    {
        using SafeFileHandle handle = OpenHandle(path, what, maxBytes, error, out FileFacts facts);
        return facts;
    }

    /// <summary>Opens <paramref name="path"/> after the checks of <see cref="OpenRead"/> and returns the handle and what it is.</summary>
    public static SafeFileHandle OpenHandle(string path, string what, long maxBytes, Func<string, Exception> error, out FileFacts facts, string? tooLargeReason = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(error);
        SafeFileHandle handle;
        try
        {
            handle = NativeFile.OpenForReading(path);
        }
        catch (FileNotFoundException)
        {
            throw error($"{what} '{path}' does not exist.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw error($"Cannot open {Lower(what)} '{path}': {e.Message}");
        }

        try
        {
            facts = NativeFile.ProbeHandle(handle, path);
            if (facts.Kind != FileKind.Regular)
            {
                throw error($"{what} '{path}' is {Describe(facts.Kind)}, not a regular file.");
            }

            if (facts.Size > maxBytes)
            {
                throw error(tooLargeReason is null
                    ? $"{what} '{path}' is {facts.Size:N0} bytes; the limit is {maxBytes:N0}."
                    : $"{what} '{path}' is {facts.Size:N0} bytes; {tooLargeReason} (the limit is {maxBytes:N0}).");
            }

            InputScope.Register(path, facts);
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>"a FIFO", "a directory"... for messages.</summary>
    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Directory => "a directory",
        FileKind.Fifo => "a FIFO (named pipe)",
        FileKind.CharacterDevice => "a character device",
        FileKind.BlockDevice => "a block device",
        FileKind.Socket => "a socket",
        FileKind.Link => "a symbolic link",
        _ => "a regular file",
    };

    private static string Lower(string what) => what.Length > 0 && char.IsUpper(what[0]) && !(what.Length > 1 && char.IsUpper(what[1]))
        ? char.ToLowerInvariant(what[0]) + what[1..]
        : what;
}
