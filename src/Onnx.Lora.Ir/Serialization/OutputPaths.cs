namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Plain-words reasons for an output path that cannot be written, checked before any temporary file exists: the
/// operating system's own errors for these cases ("The file '…' already exists", "Is a directory") name the wrong
/// file or say nothing useful.
/// </summary>
internal static class OutputPaths
{
    /// <summary>Refuses an output that is a directory, or whose folder is (under) a regular file.</summary>
    /// <exception cref="OutputWriteException">The path cannot be a file.</exception>
    public static void EnsureWritableShape(string fullPath)
    {
        if (Directory.Exists(fullPath))
        {
            throw new OutputWriteException($"Cannot write '{fullPath}': it is a directory.");
        }

        for (string? folder = Path.GetDirectoryName(fullPath); !string.IsNullOrEmpty(folder); folder = Path.GetDirectoryName(folder))
        {
            if (Directory.Exists(folder))
            {
                return;
            }

            if (File.Exists(folder))
            {
                throw new OutputWriteException($"Cannot write '{fullPath}': '{folder}' is a file, not a folder.");
            }
        }
    }

    /// <summary>Runs <paramref name="action"/>, turning an I/O failure into an <see cref="OutputWriteException"/> naming <paramref name="finalPath"/>.</summary>
    public static void Guard(string finalPath, string? temporaryPath, Action action)
    {
        try
        {
            action();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw OutputWriteException.For(finalPath, temporaryPath, e);
        }
        catch (ArgumentOutOfRangeException e) when (e.TargetSite?.DeclaringType == typeof(RandomAccess))
        {
            // NOTE: .NET reports EFBIG (the process's file-size limit, or the file system's largest file) this way.
            throw new OutputWriteException($"Cannot write '{finalPath}': the file outgrows the file-size limit (ulimit -f) or the file system's largest file ({e.Message})", e);
        }
    }
}
