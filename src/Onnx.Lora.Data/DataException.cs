using Onnx.Lora.Ir;

namespace Onnx.Lora.Data;

/// <summary>Training data or a tokenizer is unusable; the message names the file and, for data, the line.</summary>
public class DataException : ToolchainException
{
    /// <summary>Creates the exception.</summary>
    public DataException() { }

    /// <summary>Creates the exception with a message.</summary>
    public DataException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public DataException(string message, Exception innerException) : base(message, innerException) { }
}
