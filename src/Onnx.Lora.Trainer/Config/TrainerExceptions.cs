using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer;

/// <summary>A checkpoint could not be written or read; the message names the folder and the file.</summary>
public class CheckpointException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public CheckpointException() { }

    /// <summary>Creates the exception with a message.</summary>
    public CheckpointException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public CheckpointException(string message, Exception innerException) : base(message, innerException) { }
}
