using Onnx.Lora.Ir;

namespace Onnx.Lora.Cli;

/// <summary>The command line is incomplete or contradictory (a missing option, a malformed value); exit code 2.</summary>
internal sealed class UsageException : LoraException
{
    public UsageException() { }

    public UsageException(string message) : base(message) { }

    public UsageException(string message, Exception innerException) : base(message, innerException) { }
}
