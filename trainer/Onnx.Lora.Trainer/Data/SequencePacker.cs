namespace Onnx.Lora.Trainer.Data;

/// <summary>A training row: one example, or several packed ones, at most seq_length tokens (unpadded).</summary>
/// <param name="InputIds">Token ids.</param>
/// <param name="Labels">Targets (−100 where no loss), HF convention.</param>
/// <param name="ExampleCount">Examples in this row.</param>
public sealed record TrainingRow(int[] InputIds, int[] Labels, int ExampleCount);

/// <summary>Turns examples into rows, one per example or packed.</summary>
/// <remarks>
/// Packing is greedy in dataset order: examples are appended to the current row while they fit; one that does
/// not fit starts a new row (an example is never split across rows, so no example loses its start or end). The
/// rest of the last row of each run is padding. What packing implies: within a row the attention mask is all
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
        return examples.Select(e => new TrainingRow(e.InputIds, e.Labels, 1)).ToList();
    }

    /// <summary>Packs examples into rows of at most <paramref name="seqLength"/> tokens.</summary>
    /// <exception cref="ArgumentException">An example is longer than <paramref name="seqLength"/> (the loader refuses those first).</exception>
    public static List<TrainingRow> Pack(IReadOnlyList<TokenizedExample> examples, int seqLength)
    {
        ArgumentNullException.ThrowIfNull(examples);
        ArgumentOutOfRangeException.ThrowIfLessThan(seqLength, 2);
        var rows = new List<TrainingRow>();
        var ids = new List<int>(seqLength);
        var labels = new List<int>(seqLength);
        int count = 0;
        foreach (TokenizedExample e in examples)
        {
            if (e.InputIds.Length > seqLength)
            {
                throw new ArgumentException($"{e.Source}: example of {e.InputIds.Length} tokens does not fit seq_length {seqLength}.", nameof(examples));
            }

            if (ids.Count + e.InputIds.Length > seqLength)
            {
                rows.Add(new TrainingRow([.. ids], [.. labels], count));
                ids.Clear();
                labels.Clear();
                count = 0;
            }

            int start = ids.Count;
            ids.AddRange(e.InputIds);
            labels.AddRange(e.Labels);
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
