namespace Onnx.Lora.Data;

/// <summary>
/// One micro-batch as int64 tensors [<see cref="BatchSize"/>, <see cref="SeqLength"/>], row-major. The arrays are
/// exactly BatchSize·SeqLength long (so they can back OrtValues directly) and are reused: the loader keeps one set
/// per column count it has served (at most seq_length/8 sets), so steady-state batches allocate nothing. Copy what
/// you need to keep before the next <see cref="DataLoader.Next"/>.
/// </summary>
public sealed class Batch
{
    private readonly Dictionary<int, (long[] Ids, long[] Mask, long[] Labels)> _buffers = [];

    internal Batch(int batchSize, int maxSeqLength)
    {
        BatchSize = batchSize;
        MaxSeqLength = maxSeqLength;
        InputIds = AttentionMask = Labels = [];
    }

    /// <summary>Rows in the batch (fixed; a short last batch is filled with padding rows that carry no loss).</summary>
    public int BatchSize { get; }

    /// <summary>Columns of this batch (≤ the loader's seq length).</summary>
    public int SeqLength { get; private set; }

    /// <summary>Capacity in columns.</summary>
    public int MaxSeqLength { get; }

    /// <summary>Rows holding real data (the rest are padding rows).</summary>
    public int RealRows { get; internal set; }

    /// <summary>Positions whose label is not −100 (before the shift: the loss sees one fewer per row start).</summary>
    public int TargetTokens { get; internal set; }

    /// <summary>input_ids [BatchSize, SeqLength] (length exactly BatchSize·SeqLength).</summary>
    public long[] InputIds { get; private set; }

    /// <summary>attention_mask [BatchSize, SeqLength]: 1 on tokens, 0 on padding.</summary>
    public long[] AttentionMask { get; private set; }

    /// <summary>labels [BatchSize, SeqLength]: target id or −100 (HF convention: the loss shifts).</summary>
    public long[] Labels { get; private set; }

    internal void Resize(int columns)
    {
        if (!_buffers.TryGetValue(columns, out (long[] Ids, long[] Mask, long[] Labels) set))
        {
            int n = BatchSize * columns;
            set = (new long[n], new long[n], new long[n]);
            _buffers[columns] = set;
        }

        SeqLength = columns;
        (InputIds, AttentionMask, Labels) = set;
    }
}

/// <summary>
/// Serves micro-batches over training rows, epoch after epoch. The order of epoch e is a permutation drawn from
/// a generator seeded by (seed, e), so any position (epoch, index) can be resumed without replaying earlier
/// epochs. Rows are right-padded with the pad id (attention 0, label −100) to the longest row of the batch,
/// rounded up to a multiple of <see cref="PadToMultipleOf"/> and capped at the seq length — or always to the
/// seq length when <c>fixedLength</c> is set (static shapes).
/// </summary>
public sealed class DataLoader
{
    private readonly IReadOnlyList<TrainingRow> _rows;
    private readonly int _seed;
    private readonly bool _shuffle;
    private readonly bool _fixedLength;
    private readonly long _padId;
    private readonly Batch _batch;
    private readonly int[] _order;
    private int _orderEpoch = -1;
    private int _shardRank;
    private int _shardCount = 1;

    /// <summary>Creates a loader.</summary>
    /// <param name="rows">Rows (see <see cref="SequencePacker"/>); each at most <paramref name="seqLength"/> tokens.</param>
    /// <param name="batchSize">Rows per batch.</param>
    /// <param name="seqLength">Maximum columns.</param>
    /// <param name="padId">Id written into padding positions (they are masked, so it never trains).</param>
    /// <param name="seed">Shuffle seed.</param>
    /// <param name="shuffle">Shuffle each epoch (false for evaluation).</param>
    /// <param name="fixedLength">Always pad to <paramref name="seqLength"/>.</param>
    public DataLoader(IReadOnlyList<TrainingRow> rows, int batchSize, int seqLength, int padId, int seed, bool shuffle = true, bool fixedLength = false)
    {
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        ArgumentOutOfRangeException.ThrowIfLessThan(seqLength, 2);
        if (rows.Count == 0)
        {
            throw new ArgumentException("There are no rows to load.", nameof(rows));
        }

        foreach (TrainingRow r in rows)
        {
            if (r.InputIds.Length > seqLength || r.InputIds.Length != r.Labels.Length)
            {
                throw new ArgumentException($"A row of {r.InputIds.Length} tokens does not fit seq length {seqLength}.", nameof(rows));
            }
        }

        _rows = rows;
        _seed = seed;
        _shuffle = shuffle;
        _fixedLength = fixedLength;
        _padId = padId;
        SeqLength = seqLength;
        _batch = new Batch(batchSize, seqLength);
        _order = new int[rows.Count];
        Position = new DataPosition(0, 0);
    }

    /// <summary>Dynamic padding granularity.</summary>
    public const int PadToMultipleOf = 8;

    /// <summary>Maximum columns.</summary>
    public int SeqLength { get; }

    /// <summary>Rows per epoch.</summary>
    public int RowCount => _rows.Count;

    /// <summary>Batches per epoch (the last may be partial); with a shard, global batches of all ranks.</summary>
    public int BatchesPerEpoch => (_rows.Count + GlobalBatchSize - 1) / GlobalBatchSize;

    private int GlobalBatchSize => _batch.BatchSize * _shardCount;

    /// <summary>
    /// Serves rank <paramref name="rank"/>'s share of global batches of batch size × <paramref name="ranks"/> rows: rows
    /// [rank·batch, (rank+1)·batch) of each, so the ranks together read exactly what one loader with the global batch
    /// size reads. <see cref="Position"/> stays global (the same on every rank), so checkpoints do not depend on the rank.
    /// </summary>
    public void UseShard(int rank, int ranks)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(ranks);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, ranks);
        _shardRank = rank;
        _shardCount = ranks;
    }

    /// <summary>The next row to serve.</summary>
    public DataPosition Position { get; private set; }

    /// <summary>Continues from <paramref name="position"/> (from a checkpoint).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The position is outside the data.</exception>
    public void Seek(DataPosition position)
    {
        ArgumentNullException.ThrowIfNull(position);
        if (position.Epoch < 0 || position.Index < 0 || position.Index > _rows.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(position), position, $"Data position outside {_rows.Count} rows.");
        }

        Position = position;
    }

    /// <summary>Row indices of epoch <paramref name="epoch"/> in serving order.</summary>
    public int[] EpochOrder(int epoch)
    {
        EnsureOrder(epoch);
        return (int[])_order.Clone();
    }

    /// <summary>
    /// Fills the reusable batch with the next rows. A batch never spans two epochs: the last batch of an epoch
    /// may have fewer real rows, the rest being padding rows.
    /// </summary>
    public Batch Next()
    {
        if (Position.Index >= _rows.Count)
        {
            Position = new DataPosition(Position.Epoch + 1, 0);
        }

        EnsureOrder(Position.Epoch);
        // With a shard, this rank's rows of the global batch; at an epoch's end a rank may get fewer or none.
        int globalTake = Math.Min(GlobalBatchSize, _rows.Count - Position.Index);
        int first = Position.Index + Math.Min(globalTake, _shardRank * _batch.BatchSize);
        int take = Math.Clamp(globalTake - (_shardRank * _batch.BatchSize), 0, _batch.BatchSize);
        int longest = 1;
        for (int r = 0; r < take; r++)
        {
            longest = Math.Max(longest, _rows[_order[first + r]].InputIds.Length);
        }

        int columns = _fixedLength ? SeqLength : Math.Min(SeqLength, (longest + PadToMultipleOf - 1) / PadToMultipleOf * PadToMultipleOf);
        _batch.Resize(columns);
        _batch.RealRows = take;
        Span<long> ids = _batch.InputIds, mask = _batch.AttentionMask, labels = _batch.Labels;
        ids.Fill(_padId);
        mask.Clear();
        labels.Fill(TokenizedExample.IgnoreIndex);
        int targets = 0;
        for (int r = 0; r < take; r++)
        {
            TrainingRow row = _rows[_order[first + r]];
            int offset = r * columns;
            int attended = row.AttendedTokens ?? row.InputIds.Length;
            for (int c = 0; c < row.InputIds.Length; c++)
            {
                ids[offset + c] = row.InputIds[c];
                mask[offset + c] = c < attended ? 1 : 0;
                labels[offset + c] = row.Labels[c];
                targets += row.Labels[c] == TokenizedExample.IgnoreIndex ? 0 : 1;
            }
        }

        for (int r = take; r < _batch.BatchSize; r++)
        {
            // A fully masked row can turn attention softmax into NaN; one visible pad token (no label) avoids it.
            mask[r * columns] = 1;
        }

        _batch.TargetTokens = targets;
        Position = new DataPosition(Position.Epoch, Position.Index + globalTake);
        return _batch;
    }

    private void EnsureOrder(int epoch)
    {
        if (_orderEpoch == epoch)
        {
            return;
        }

        for (int i = 0; i < _order.Length; i++)
        {
            _order[i] = i;
        }

        if (_shuffle)
        {
            new DeterministicRandom(((long)_seed << 32) ^ (uint)epoch ^ 0x5DEECE66DL).Shuffle(_order.AsSpan());
        }

        _orderEpoch = epoch;
    }
}
