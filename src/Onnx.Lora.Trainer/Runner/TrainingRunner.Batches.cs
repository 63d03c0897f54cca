using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Runner;

// How loader batches become the session's TrainingBatch: one conversion, and buffers reused across micro-batches.
public sealed partial class TrainingRunner
{
    internal static TrainingBatch ToTrainingBatch(Batch b) => new()
    {
        InputIds = b.InputIds,
        AttentionMask = b.AttentionMask,
        Labels = b.Labels,
        BatchSize = b.BatchSize,
        SequenceLength = b.SeqLength,
    };

    /// <summary>
    /// The loader reuses one buffer set per column count, so micro-batch k of a step must be copied before
    /// micro-batch k+1 is loaded; each k keeps its own reusable set per column count (allocated once).
    /// </summary>
    private sealed class MicroBatchBuffers(int count)
    {
        private readonly Dictionary<int, (long[] Ids, long[] Mask, long[] Labels)>[] _sets =
            Enumerable.Range(0, count).Select(_ => new Dictionary<int, (long[], long[], long[])>()).ToArray();

        public TrainingBatch Hold(int k, Batch b)
        {
            if (_sets.Length == 1)
            {
                return ToTrainingBatch(b); // Consumed before the next Next(): no copy needed.
            }

            if (!_sets[k].TryGetValue(b.SeqLength, out var set))
            {
                set = (new long[b.InputIds.Length], new long[b.InputIds.Length], new long[b.InputIds.Length]);
                _sets[k][b.SeqLength] = set;
            }

            b.InputIds.CopyTo(set.Ids, 0);
            b.AttentionMask.CopyTo(set.Mask, 0);
            b.Labels.CopyTo(set.Labels, 0);
            return new TrainingBatch { InputIds = set.Ids, AttentionMask = set.Mask, Labels = set.Labels, BatchSize = b.BatchSize, SequenceLength = b.SeqLength };
        }
    }
}
