using Onnx.Lora.Ir;

namespace Onnx.Lora;

/// <summary>An error about LoRA itself (configuration, injection, training, adapters); the message names the file or tensor.</summary>
public class LoraException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public LoraException() { }

    /// <summary>Creates the exception with a message.</summary>
    public LoraException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public LoraException(string message, Exception innerException) : base(message, innerException) { }
}
