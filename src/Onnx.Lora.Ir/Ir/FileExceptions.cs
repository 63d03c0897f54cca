namespace Onnx.Lora.Ir;

/// <summary>
/// An output file could not be written: the disk is full, the folder is read-only, a path component is a regular
/// file, the output is a directory. Not a fault of any input, so it has an exit code of its own; the message names the
/// file the user asked for, never a temporary file.
/// </summary>
public class OutputWriteException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public OutputWriteException() { }

    /// <summary>Creates the exception with a message.</summary>
    public OutputWriteException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public OutputWriteException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>
    /// The exception for a failed write of <paramref name="finalPath"/> through <paramref name="temporaryPath"/>: the
    /// operating system's reason, with the temporary name replaced by the final one.
    /// </summary>
    public static OutputWriteException For(string finalPath, string? temporaryPath, Exception cause)
    {
        ArgumentNullException.ThrowIfNull(finalPath);
        ArgumentNullException.ThrowIfNull(cause);
        string reason = temporaryPath is null ? cause.Message : cause.Message.Replace(temporaryPath, finalPath, StringComparison.Ordinal);
        return new OutputWriteException($"Cannot write '{finalPath}': {reason}", cause);
    }
}

/// <summary>
/// An output would replace one of the command's inputs (the same file by another name, or a data file the input
/// needs), like <c>cp a a</c>, or another process holds its lock: refused before anything is written.
/// </summary>
public class OutputConflictException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public OutputConflictException() { }

    /// <summary>Creates the exception with a message.</summary>
    public OutputConflictException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public OutputConflictException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A file or folder named on the command line (or in a config file) does not exist.</summary>
public class InputNotFoundException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public InputNotFoundException() { }

    /// <summary>Creates the exception with a message.</summary>
    public InputNotFoundException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public InputNotFoundException(string message, Exception innerException) : base(message, innerException) { }
}
