using Onnx.Lora.Graph;

namespace Onnx.Lora.Trainer;

/// <summary>A training option is invalid; the message names the file (when it came from one) and the key.</summary>
public class ConfigException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public ConfigException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ConfigException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ConfigException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>Training data or a tokenizer is unusable; the message names the file and, for data, the line.</summary>
public class DataException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public DataException() { }

    /// <summary>Creates the exception with a message.</summary>
    public DataException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public DataException(string message, Exception innerException) : base(message, innerException) { }
}

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
