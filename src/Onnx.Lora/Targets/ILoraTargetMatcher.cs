using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>Recognizes one kind of linear layer. Returns a failure with a reason instead of throwing.</summary>
public interface ILoraTargetMatcher
{
    /// <summary>Operator this matcher handles (for "supported ops" messages).</summary>
    string OpName { get; }

    /// <summary>Matches <paramref name="node"/>; the target's module name is filled in later by <see cref="TargetDiscovery"/>.</summary>
    MatchResult<LinearTarget> Match(Node node);
}
