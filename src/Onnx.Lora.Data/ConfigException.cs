using Onnx.Lora.Ir;

namespace Onnx.Lora.Data;

/// <summary>A training option is invalid; the message names the file (when it came from one) and the key.</summary>
public class ConfigException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public ConfigException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ConfigException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ConfigException(string message, Exception innerException) : base(message, innerException) { }
}
