using Onnx.Lora.Ir;

namespace Onnx.Lora.Formats;

/// <summary>An adapter or tensor file (safetensors, .onnx_adapter, PEFT folder) is malformed; the message names the file and the tensor.</summary>
public class AdapterFormatException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public AdapterFormatException() { }

    /// <summary>Creates the exception with a message.</summary>
    public AdapterFormatException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public AdapterFormatException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A well-formed adapter does not fit the model it is applied to (unknown module, wrong shape, name clash).</summary>
public class AdapterMismatchException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public AdapterMismatchException() { }

    /// <summary>Creates the exception with a message.</summary>
    public AdapterMismatchException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public AdapterMismatchException(string message, Exception innerException) : base(message, innerException) { }
}
