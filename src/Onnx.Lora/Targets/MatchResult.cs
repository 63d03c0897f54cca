namespace Onnx.Lora.Targets;

/// <summary>
/// The outcome of matching a pattern: a success carrying what was bound, or a failure carrying the reason.
/// NOTE: a pattern that does not match is an ordinary outcome, not an error, so matchers return this instead of throwing.
/// </summary>
/// <typeparam name="T">What a successful match binds.</typeparam>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1000:Do not declare static members on generic types", Justification = "MatchResult<T>.Fail(reason) reads as the pattern it names; a non-generic factory would need the type argument spelled out anyway.")]
public readonly record struct MatchResult<T> where T : class
{
    private MatchResult(T? value, string? reason)
    {
        Value = value;
        Reason = reason;
    }

    /// <summary>True when the pattern matched.</summary>
    public bool Success => Value is not null;

    /// <summary>What the match bound (null on failure).</summary>
    public T? Value { get; }

    /// <summary>Why the pattern did not match (null on success).</summary>
    public string? Reason { get; }

    /// <summary>A successful match.</summary>
    public static MatchResult<T> Ok(T value)
    {
        ArgumentNullException.ThrowIfNull(value);
        return new(value, null);
    }

    /// <summary>A failed match with its reason, e.g. "'W' is a graph input".</summary>
    public static MatchResult<T> Fail(string reason) => new(null, reason);

    /// <inheritdoc />
    public override string ToString() => Success ? $"Ok({Value})" : $"Fail({Reason})";
}
