using Onnx.Lora.Trainer.Distributed;

namespace Onnx.Lora.Tests.Distributed;

/// <summary>
/// N ranks as N threads of this process: each all-reduce waits for every rank, adds the buffers in rank order and hands
/// every rank the same sum (what MPI_Allreduce promises), so the trainer's data-parallel code runs without MPI.
/// </summary>
internal sealed class InProcessRanks : IDisposable
{
    private readonly Barrier _barrier;
    private readonly double[]?[] _slots;

    public InProcessRanks(int size)
    {
        _barrier = new Barrier(size);
        _slots = new double[size][];
        Communicators = Enumerable.Range(0, size).Select(r => (ICommunicator)new ThreadRank(this, r)).ToArray();
    }

    public IReadOnlyList<ICommunicator> Communicators { get; }

    public void Dispose() => _barrier.Dispose();

    /// <summary>All-reduce calls made per rank.</summary>
    public int[] Calls => Communicators.Select(c => ((ThreadRank)c).Calls).ToArray();

    private void Sum(int rank, Span<double> values)
    {
        _slots[rank] = values.ToArray();
        _barrier.SignalAndWait();
        values.Clear();
        foreach (double[]? slot in _slots)
        {
            if (slot!.Length != values.Length)
            {
                throw new InvalidOperationException($"Ranks reduced buffers of different lengths ({slot.Length} and {values.Length}).");
            }

            for (int i = 0; i < values.Length; i++)
            {
                values[i] += slot[i];
            }
        }

        _barrier.SignalAndWait();
    }

    private sealed class ThreadRank(InProcessRanks ranks, int rank) : ICommunicator
    {
        public int Calls { get; private set; }

        public int Rank => rank;

        public int Size => ranks._slots.Length;

        public int LocalRank => rank;

        public void AllReduceSum(Span<double> values)
        {
            Calls++;
            ranks.Sum(rank, values);
        }

        public void AllReduceSum(Span<float> values)
        {
            double[] wide = new double[values.Length];
            for (int i = 0; i < wide.Length; i++)
            {
                wide[i] = values[i];
            }

            AllReduceSum(wide);
            for (int i = 0; i < wide.Length; i++)
            {
                values[i] = (float)wide[i];
            }
        }

        public void Broadcast(Span<byte> data, int root) => throw new NotSupportedException();

        public void Barrier() => ranks._barrier.SignalAndWait();

        public void Abort(int exitCode) => throw new InvalidOperationException($"abort {exitCode}");

        public void Dispose() { }
    }
}
