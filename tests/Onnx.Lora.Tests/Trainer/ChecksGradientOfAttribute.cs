namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Marks a finite-difference test as checking the VJP of <see cref="OpTypes"/> (in <see cref="Domain"/>), so that
/// <see cref="OpTableTests"/> can require a case for every differentiable op of the op table.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = true)]
public sealed class ChecksGradientOfAttribute(params string[] opTypes) : Attribute
{
    /// <summary>The op types whose gradient the test checks.</summary>
    public IReadOnlyList<string> OpTypes { get; } = opTypes;

    /// <summary>Their domain ("" for the default ONNX domain).</summary>
    public string Domain { get; set; } = string.Empty;
}
