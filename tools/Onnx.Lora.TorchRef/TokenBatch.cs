namespace Onnx.Lora.TorchRef;

/// <summary>
/// One seeded training batch shared by both peers: ids [batch, seq], attention mask, and causal-LM labels (= ids,
/// with -100 on padding so those targets are not counted). Rows after the first are right-padded by a few
/// positions so the padding path of the mask and the ignore_index path of the loss are both exercised.
/// </summary>
internal sealed record TokenBatch(long[] Ids, long[] Mask, long[] Labels, int BatchSize, int SeqLen)
{
    public static TokenBatch Create(int seed, int batchSize, int seqLen, int vocab, bool padRows = true)
    {
        var rng = new Random(seed);
        var ids = new long[batchSize * seqLen];
        var mask = new long[ids.Length];
        var labels = new long[ids.Length];
        for (int b = 0; b < batchSize; b++)
        {
            int padding = padRows ? Math.Min(b * 3, seqLen / 2) : 0;
            for (int t = 0; t < seqLen; t++)
            {
                int i = (b * seqLen) + t;
                bool real = t < seqLen - padding;
                ids[i] = real ? rng.Next(3, vocab) : 0;
                mask[i] = real ? 1 : 0;
                labels[i] = real ? ids[i] : -100;
            }
        }

        return new TokenBatch(ids, mask, labels, batchSize, seqLen);
    }

    /// <summary>Number of positions that contribute to the causal-LM loss (targets t = 1..seq-1 not equal to -100).</summary>
    public int CountedTargets()
    {
        int n = 0;
        for (int b = 0; b < BatchSize; b++)
        {
            for (int t = 1; t < SeqLen; t++)
            {
                n += Labels[(b * SeqLen) + t] != -100 ? 1 : 0;
            }
        }

        return n;
    }
}
