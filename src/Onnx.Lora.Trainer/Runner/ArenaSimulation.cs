namespace Onnx.Lora.Trainer.Runner;

/// <summary>
/// ONNX Runtime's CPU arena (BFCArena with its defaults) replayed on a sequence of allocations and frees, to tell how
/// much memory the process really touches, not only how many bytes are live at once. The arena never returns memory:
/// it grows by regions, each twice the size of the one before (<c>kNextPowerOfTwo</c>, first region 1 MiB) or as large
/// as the request, serves each request from the smallest free chunk that fits (splitting it when the rest is large),
/// and merges freed neighbours. A region's pages count once something was written into them; the high-water mark of
/// each region is taken as touched. Measured on the 135M shape, the arena's resident memory is 1.3–5.6× the peak of
/// live values (the steps of the region sizes and the holes between chunks), which is why the estimate replays it.
/// </summary>
internal sealed class ArenaSimulation
{
    private const long Alignment = 256;
    private const long MaxDeadBytesPerChunk = 128L << 20;
    private readonly List<Region> _regions = [];
    private readonly Dictionary<object, (Region Region, Chunk Chunk)> _allocated = new(ReferenceEqualityComparer.Instance);
    private long _nextRegion = 1L << 20;

    /// <summary>Bytes of the arena's regions that were written at least once (what the process holds resident).</summary>
    public long Touched => _regions.Sum(r => r.HighWater);

    /// <summary>Bytes reserved by the arena's regions.</summary>
    public long Reserved => _regions.Sum(r => r.Size);

    /// <summary>Serves <paramref name="bytes"/> for <paramref name="owner"/>.</summary>
    public void Allocate(object owner, long bytes)
    {
        long size = Math.Max(Alignment, (bytes + Alignment - 1) / Alignment * Alignment);
        (Region Region, Chunk Chunk)? best = null;
        foreach (Region region in _regions)
        {
            foreach (Chunk c in region.Chunks)
            {
                if (!c.InUse && c.Size >= size && (best is null || c.Size < best.Value.Chunk.Size))
                {
                    best = (region, c);
                }
            }
        }

        if (best is null)
        {
            long regionSize = _nextRegion;
            while (regionSize < size)
            {
                regionSize *= 2;
            }

            _nextRegion = regionSize * 2;
            var region = new Region(regionSize);
            _regions.Add(region);
            best = (region, region.Chunks[0]);
        }

        (Region r, Chunk chunk) = best.Value;
        if (chunk.Size >= 2 * size || chunk.Size - size >= MaxDeadBytesPerChunk)
        {
            int at = r.Chunks.IndexOf(chunk);
            r.Chunks.Insert(at + 1, new Chunk(chunk.Offset + size, chunk.Size - size));
            chunk.Size = size;
        }

        chunk.InUse = true;
        r.HighWater = Math.Max(r.HighWater, chunk.Offset + size); // what the kernel writes, not the chunk's unused tail
        _allocated[owner] = (r, chunk);
    }

    /// <summary>Returns the chunk of <paramref name="owner"/> to the arena.</summary>
    public void Free(object owner)
    {
        if (!_allocated.Remove(owner, out (Region Region, Chunk Chunk) entry))
        {
            return;
        }

        List<Chunk> chunks = entry.Region.Chunks;
        entry.Chunk.InUse = false;
        int i = chunks.IndexOf(entry.Chunk);
        if (i + 1 < chunks.Count && !chunks[i + 1].InUse)
        {
            entry.Chunk.Size += chunks[i + 1].Size;
            chunks.RemoveAt(i + 1);
        }

        if (i > 0 && !chunks[i - 1].InUse)
        {
            chunks[i - 1].Size += entry.Chunk.Size;
            chunks.RemoveAt(i);
        }
    }

    private sealed class Region(long size)
    {
        public long Size { get; } = size;

        public List<Chunk> Chunks { get; } = [new Chunk(0, size)];

        public long HighWater { get; set; }
    }

    private sealed class Chunk(long offset, long size)
    {
        public long Offset { get; } = offset;

        public long Size { get; set; } = size;

        public bool InUse { get; set; }
    }
}
