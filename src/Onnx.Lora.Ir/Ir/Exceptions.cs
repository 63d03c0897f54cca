namespace Onnx.Lora.Ir;

/// <summary>
/// Base of every error this toolchain raises on purpose (the CLI maps each kind to an exit code; anything else is a bug).
/// The IR's own errors derive from it directly; LoRA's derive from LoraException, one layer up.
/// </summary>
public class ToolchainException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ToolchainException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ToolchainException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ToolchainException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A graph invariant would be broken (a dangling value, a rewired graph output...).</summary>
public class GraphValidationException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public GraphValidationException() { }

    /// <summary>Creates the exception with a message.</summary>
    public GraphValidationException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public GraphValidationException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A model file could not be read or written; the message names the file and the tensor or node.</summary>
public class OnnxSerializationException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public OnnxSerializationException() { }

    /// <summary>Creates the exception with a message.</summary>
    public OnnxSerializationException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public OnnxSerializationException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A graph pass failed; the message names the pass and the passes that ran before it.</summary>
public class PassException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public PassException() { }

    /// <summary>Creates the exception with a message.</summary>
    public PassException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public PassException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>
/// The job would need more memory (or disk) than the machine has; raised before the allocation, with the estimate,
/// so the user sees numbers instead of an out-of-memory kill.
/// </summary>
public class ResourceLimitException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public ResourceLimitException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ResourceLimitException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ResourceLimitException(string message, Exception innerException) : base(message, innerException) { }
}
