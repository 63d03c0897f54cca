using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Trainer;

/// <summary>
/// Maps a <see cref="TrainingBatch"/> onto the batch inputs a training or evaluation model declares: input_ids,
/// attention_mask, position_ids, labels / targets, and empty past tensors. The OrtValues wrap the batch's own arrays
/// (or small derived ones), so only batch-sized data is touched per step.
/// </summary>
internal sealed class BatchFeeder
{
    private readonly List<(string Name, NodeMetadata Meta)> _inputs;
    private readonly HashSet<string> _emptyPast;
    private readonly HashSet<string> _labels;

    // Reused from step to step (the OrtValues over them are disposed before the next Feed): no per-step arrays.
    private long[] _positions = [];
    private long[] _ones = [];

    public BatchFeeder(InferenceSession session, TrainingArtifacts artifacts)
    {
        var trainable = artifacts.Trainable.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        _inputs = session.InputMetadata.Where(p => !trainable.Contains(p.Key)).Select(p => (p.Key, p.Value)).ToList();
        _emptyPast = artifacts.EmptyPastInputs.ToHashSet(StringComparer.Ordinal);
        _labels = artifacts.Description.LabelInputs.ToHashSet(StringComparer.Ordinal);
    }

    public void Feed(TrainingBatch batch, List<string> names, List<OrtValue> values)
    {
        long[] shape = [batch.BatchSize, batch.SequenceLength];
        long expected = (long)batch.BatchSize * batch.SequenceLength;
        if (batch.InputIds.Length != expected)
        {
            throw new LoraException($"Batch input_ids has {batch.InputIds.Length} ids; expected {batch.BatchSize} x {batch.SequenceLength} = {expected}.");
        }

        foreach ((string name, NodeMetadata meta) in _inputs)
        {
            names.Add(name);
            values.Add(name switch
            {
                "input_ids" => Ids(batch.InputIds, meta, shape),
                "attention_mask" => Ids(batch.AttentionMask ?? Ones(expected), meta, shape),
                "position_ids" => Ids(Positions(batch), meta, shape),
                // BERT-style segment ids: one segment per row.
                "token_type_ids" => Ids(new long[expected], meta, shape),
                _ when _emptyPast.Contains(name) => EmptyPast(meta, batch.BatchSize, name),
                _ when _labels.Contains(name) && meta.ElementType == typeof(float) => Targets(batch, name),
                _ when _labels.Contains(name) => Labels(batch, shape),
                _ => throw new LoraException($"The training model input '{name}' is not fed by a training batch (known: input_ids, attention_mask, position_ids, token_type_ids, labels, past inputs)."),
            });
        }
    }

    /// <summary>Disposes the OrtValues created for the batch, not the session's own parameter values.</summary>
    public static void DisposeOwned(List<OrtValue> values, OrtValue[] keep)
    {
        // A linear search over the few parameters instead of a set: no allocation per step.
        foreach (OrtValue v in values)
        {
            if (Array.IndexOf(keep, v) < 0)
            {
                v.Dispose();
            }
        }

        values.Clear();
    }

    private static OrtValue Ids(long[] data, NodeMetadata meta, long[] shape) =>
        meta.ElementType == typeof(int)
            ? OrtValue.CreateTensorValueFromMemory(data.Select(x => (int)x).ToArray(), shape)
            : OrtValue.CreateTensorValueFromMemory(data, shape);

    private long[] Ones(long n)
    {
        if (_ones.Length != n)
        {
            _ones = new long[n];
            Array.Fill(_ones, 1L);
        }

        return _ones;
    }

    private long[] Positions(TrainingBatch batch)
    {
        if (_positions.Length != batch.InputIds.Length)
        {
            _positions = new long[batch.InputIds.Length];
        }

        long[] positions = _positions;
        for (int b = 0; b < batch.BatchSize; b++)
        {
            long p = 0;
            for (int s = 0; s < batch.SequenceLength; s++)
            {
                int i = (b * batch.SequenceLength) + s;
                bool token = batch.AttentionMask is null || batch.AttentionMask[i] != 0;
                positions[i] = token ? p++ : 0;
            }
        }

        return positions;
    }

    private static OrtValue Labels(TrainingBatch batch, long[] shape)
    {
        if (batch.Labels is { } labels)
        {
            return labels.Length == batch.BatchSize && batch.SequenceLength != 1
                ? OrtValue.CreateTensorValueFromMemory(labels, [batch.BatchSize])
                : OrtValue.CreateTensorValueFromMemory(labels, shape);
        }

        // Causal LM default: predict every real token, skip padding.
        long[] derived = (long[])batch.InputIds.Clone();
        if (batch.AttentionMask is { } mask)
        {
            for (int i = 0; i < derived.Length; i++)
            {
                if (mask[i] == 0)
                {
                    derived[i] = -100;
                }
            }
        }

        return OrtValue.CreateTensorValueFromMemory(derived, shape);
    }

    private static OrtValue Targets(TrainingBatch batch, string name) =>
        batch.Targets is { } t && batch.TargetShape is { } s
            ? OrtValue.CreateTensorValueFromMemory(t, s)
            : throw new LoraException($"The model's loss needs float targets for '{name}'; the batch has none.");

    private static OrtValue EmptyPast(NodeMetadata meta, int batchSize, string name)
    {
        long[] dims = meta.Dimensions.Select((d, i) => d >= 0 ? d : (meta.SymbolicDimensions[i].Contains("batch", StringComparison.OrdinalIgnoreCase) ? batchSize : 0L)).ToArray();
        if (!dims.Contains(0))
        {
            throw new LoraException($"Cannot make an empty past tensor for '{name}': no dimension of [{string.Join(",", meta.SymbolicDimensions)}] is a sequence length.");
        }

        return meta.ElementType == typeof(Float16)
            ? OrtValue.CreateTensorValueFromMemory(Array.Empty<Float16>(), dims)
            : OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), dims);
    }
}
