namespace Onnx.Lora.Trainer.Distributed;

/// <summary>
/// The few collective operations data-parallel training needs, over host memory. MPI implements it today
/// (<see cref="MpiCommunicator"/>); a single process is <see cref="SingleProcessCommunicator"/>; a CUDA rank per GPU
/// with NCCL under MPI would be a third implementation of the same calls.
/// </summary>
/// <remarks>
/// NOTE: every call is collective: all ranks make the same calls in the same order with the same lengths, or the job
/// hangs (MPI matches collectives by order, not by call site).
/// </remarks>
public interface ICommunicator : IDisposable
{
    /// <summary>This process's rank, 0 ≤ Rank &lt; Size.</summary>
    int Rank { get; }

    /// <summary>Number of ranks in the job.</summary>
    int Size { get; }

    /// <summary>Rank of this process among the ranks on the same machine (picks the GPU of a CUDA rank).</summary>
    int LocalRank { get; }

    /// <summary>Replaces <paramref name="values"/> on every rank with the element-wise sum over all ranks.</summary>
    void AllReduceSum(Span<double> values);

    /// <summary>Replaces <paramref name="values"/> on every rank with the element-wise sum over all ranks.</summary>
    void AllReduceSum(Span<float> values);

    /// <summary>Copies <paramref name="data"/> of rank <paramref name="root"/> into <paramref name="data"/> of every rank.</summary>
    void Broadcast(Span<byte> data, int root);

    /// <summary>Returns when every rank has called it.</summary>
    void Barrier();

    /// <summary>Ends every process of the job with <paramref name="exitCode"/>; does not return.</summary>
    void Abort(int exitCode);
}

/// <summary>One process: every collective is the identity.</summary>
public sealed class SingleProcessCommunicator : ICommunicator
{
    /// <summary>The one instance (it holds nothing).</summary>
    public static readonly SingleProcessCommunicator Instance = new();

    private SingleProcessCommunicator() { }

    /// <inheritdoc />
    public int Rank => 0;

    /// <inheritdoc />
    public int Size => 1;

    /// <inheritdoc />
    public int LocalRank => 0;

    /// <inheritdoc />
    public void AllReduceSum(Span<double> values) { }

    /// <inheritdoc />
    public void AllReduceSum(Span<float> values) { }

    /// <inheritdoc />
    public void Broadcast(Span<byte> data, int root) => ArgumentOutOfRangeException.ThrowIfNotEqual(root, 0);

    /// <inheritdoc />
    public void Barrier() { }

    /// <inheritdoc />
    public void Abort(int exitCode) => Environment.Exit(exitCode);

    /// <inheritdoc />
    public void Dispose() { }
}
