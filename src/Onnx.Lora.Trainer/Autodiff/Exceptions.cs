using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>A node on a path from a trainable tensor to the loss has an op that no gradient rule covers.</summary>
public sealed class MissingGradientRuleException : LoraException
{
    /// <summary>Creates the exception.</summary>
    public MissingGradientRuleException() { }

    /// <summary>Creates the exception with a message.</summary>
    public MissingGradientRuleException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public MissingGradientRuleException(string message, Exception innerException) : base(message, innerException) { }
}
