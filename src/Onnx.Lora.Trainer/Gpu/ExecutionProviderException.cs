using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Gpu;

/// <summary>
/// An execution provider cannot start: the ONNX Runtime build lacks it (the CPU package), or its native libraries
/// (CUDA, cuDNN, TensorRT) cannot be loaded. The message names what is missing and how to fix it.
/// </summary>
public class ExecutionProviderException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public ExecutionProviderException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ExecutionProviderException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ExecutionProviderException(string message, Exception innerException) : base(message, innerException) { }
}
