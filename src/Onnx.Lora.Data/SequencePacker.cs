namespace Onnx.Lora.Data;

/// <summary>A training row: one example, or several packed ones, at most seq_length tokens (unpadded).</summary>
/// <param name="InputIds">Token ids.</param>
/// <param name="Labels">Targets (−100 where no loss), HF convention.</param>
/// <param name="ExampleCount">Examples in this row.</param>
public sealed record TrainingRow(int[] InputIds, int[] Labels, int ExampleCount)
{
    /// <summary>Positions of <see cref="InputIds"/> that are attended (the rest is padding); null for all of them.</summary>
    public int? AttendedTokens { get; init; }
}

/// <summary>Turns examples into rows, one per example or packed.</summary>
/// <remarks>
/// Packing is greedy in dataset order: examples are appended to the current row while they fit; one that does
/// not fit starts a new row (an example that fits a row is never split, so it keeps its start and end). An example
/// longer than seq_length is split as TRL's packing splits the concatenated stream: full seq_length chunks become
/// rows of their own and its tail is packed like a short example; a chunk's first token is then predicted from no
/// context, so only that one position per chunk loses its loss. The rest of the last row of each run is padding. What packing implies: within a row the attention mask is all
/// ones, so with the plain causal mask later examples can attend to earlier ones in the same row. What we
/// prevent: the first token of every packed example after the first gets label −100, so the model is never
/// trained to predict one example's first token from the previous example's last tokens.
/// </remarks>
public static class SequencePacker
{
    /// <summary>One row per example.</summary>
    public static List<TrainingRow> Unpacked(IReadOnlyList<TokenizedExample> examples)
    {
        ArgumentNullException.ThrowIfNull(examples);
        return examples.Select(e => new TrainingRow(e.InputIds, e.Labels, 1) { AttendedTokens = e.AttendedTokens }).ToList();
    }

    /// <summary>Packs examples into rows of at most <paramref name="seqLength"/> tokens, splitting longer ones.</summary>
    public static List<TrainingRow> Pack(IReadOnlyList<TokenizedExample> examples, int seqLength)
    {
        ArgumentNullException.ThrowIfNull(examples);
        ArgumentOutOfRangeException.ThrowIfLessThan(seqLength, 2);
        if (examples.FirstOrDefault(e => e.AttendedTokens is not null) is { } padded)
        {
            throw new ArgumentException($"Example {padded.Source} carries padding (an encoder-decoder row); such rows cannot be packed.", nameof(examples));
        }

        var rows = new List<TrainingRow>();
        var ids = new List<int>(seqLength);
        var labels = new List<int>(seqLength);
        int count = 0;
        foreach (TokenizedExample e in examples)
        {
            ReadOnlySpan<int> exampleIds = e.InputIds;
            ReadOnlySpan<int> exampleLabels = e.Labels;
            while (exampleIds.Length > seqLength)
            {
                // Position 0's label is never a target (the loss shifts): a chunk needs one from position 1 on.
                if (exampleLabels[1..seqLength].IndexOfAnyExcept(TokenizedExample.IgnoreIndex) >= 0)
                {
                    rows.Add(new TrainingRow(exampleIds[..seqLength].ToArray(), exampleLabels[..seqLength].ToArray(), 1));
                }

                exampleIds = exampleIds[seqLength..];
                exampleLabels = exampleLabels[seqLength..];
            }

            if (exampleLabels.IndexOfAnyExcept(TokenizedExample.IgnoreIndex) < 0)
            {
                // A tail with no target (the completion ended in an earlier chunk) would only cost compute.
                continue;
            }

            if (ids.Count + exampleIds.Length > seqLength)
            {
                rows.Add(new TrainingRow([.. ids], [.. labels], count));
                ids.Clear();
                labels.Clear();
                count = 0;
            }

            int start = ids.Count;
            ids.AddRange(exampleIds);
            labels.AddRange(exampleLabels);
            if (start > 0)
            {
                labels[start] = TokenizedExample.IgnoreIndex;
            }

            count++;
        }

        if (ids.Count > 0)
        {
            rows.Add(new TrainingRow([.. ids], [.. labels], count));
        }

        return rows;
    }
}
