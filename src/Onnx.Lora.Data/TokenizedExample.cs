namespace Onnx.Lora.Data;

/// <summary>The JSONL row formats the trainer reads.</summary>
public enum ExampleFormat
{
    /// <summary><c>{"text": ...}</c>: every token trains.</summary>
    Text,

    /// <summary><c>{"prompt": ..., "completion": ...}</c>: the completion trains (prompt masked by default).</summary>
    PromptCompletion,

    /// <summary><c>{"messages": [{"role", "content"}, ...]}</c>: assistant replies train (others masked by default).</summary>
    Messages,

    /// <summary>Alpaca <c>{"instruction", "input"?, "output"}</c>: rendered with the Alpaca prompt; the output trains.</summary>
    Alpaca,
}

/// <summary>
/// One tokenized example. <see cref="Labels"/> follows the Hugging Face convention: same positions as
/// <see cref="InputIds"/>, the token id where the token carries loss and −100 where it does not; the loss shifts
/// (position t's logits predict label t+1).
/// </summary>
/// <param name="InputIds">Token ids, BOS/EOS included as the format adds them.</param>
/// <param name="Labels">Per-position target id or <see cref="IgnoreIndex"/>.</param>
/// <param name="Source">"file:line" the example came from.</param>
public sealed record TokenizedExample(int[] InputIds, int[] Labels, string Source)
{
    /// <summary>The label value that carries no loss (PyTorch's ignore_index).</summary>
    public const int IgnoreIndex = -100;

    /// <summary>
    /// Positions of <see cref="InputIds"/> that are real tokens (attention 1); null for all of them. An encoder-decoder
    /// row holds the source in input_ids and the target in labels, each padded to the longer of the two: the source's
    /// padding is not attended.
    /// </summary>
    public int? AttendedTokens { get; init; }

    /// <summary>Number of positions with a target.</summary>
    public int TrainableTokens => Labels.Count(l => l != IgnoreIndex);
}
