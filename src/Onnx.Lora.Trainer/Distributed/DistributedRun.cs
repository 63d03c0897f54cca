using System.Buffers.Binary;
using System.Text;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Distributed;

/// <summary>
/// The data-parallel side of a training run (<c>mpirun -np N onnx-lora train ...</c>): which rank this process is,
/// how it shards the data, how the ranks agree on failures during set-up, and which rank writes files.
/// </summary>
/// <remarks>
/// <para>
/// Semantics: <c>batch_size</c> is per rank, so a global batch is batch_size × ranks rows; rank r takes rows
/// [r·batch_size, (r+1)·batch_size) of every global micro-batch of the epoch's seeded order
/// (<see cref="DataLoader.UseShard"/>). Gradients are averaged over all target tokens of all ranks with one
/// all-reduce per optimizer step (<c>LoraTrainingSession.Step</c>), so N ranks × batch b train like one process with
/// batch N·b. Steps per epoch, the schedule and the resume fingerprint are those of the global batch
/// (<see cref="GlobalView"/>).
/// </para>
/// <para>
/// Failures: until <see cref="BeginTraining"/> every rank that fails calls <see cref="FailTogether"/> and the others
/// meet it in their next <see cref="Agree"/>: all ranks then end with the same message and exit code. After it, a
/// failure on one rank cannot be met (the others wait inside a step's all-reduce): the caller aborts the job.
/// </para>
/// </remarks>
public sealed class DistributedRun : IDisposable
{
    private readonly ICommunicator _communicator;

    /// <summary>A run with a single process (nothing is shared, nothing is loaded).</summary>
    public static DistributedRun Single { get; } = new(SingleProcessCommunicator.Instance);

    /// <summary>A run over <paramref name="communicator"/> (owned: disposing the run disposes it).</summary>
    public DistributedRun(ICommunicator communicator)
    {
        ArgumentNullException.ThrowIfNull(communicator);
        _communicator = communicator;
    }

    /// <summary>
    /// An MPI run when this process was started by an MPI launcher (<see cref="MpiCommunicator.LaunchedSize"/>), else
    /// <see cref="Single"/>; libmpi is only loaded in the first case.
    /// </summary>
    /// <param name="error">Where a lost rank is reported before the job is aborted (see <see cref="MpiCommunicator.Create"/>).</param>
    /// <exception cref="ConfigException">Started by a launcher but libmpi cannot be loaded.</exception>
    public static DistributedRun FromEnvironment(TextWriter? error = null) =>
        MpiCommunicator.LaunchedSize() is int size && size > 1 ? new DistributedRun(MpiCommunicator.Create(error)) : Single;

    /// <summary>This process's rank.</summary>
    public int Rank => _communicator.Rank;

    /// <summary>Ranks in the job.</summary>
    public int Ranks => _communicator.Size;

    /// <summary>Rank among the ranks of this machine.</summary>
    public int LocalRank => _communicator.LocalRank;

    /// <summary>True on rank 0, the only rank that writes checkpoints, metrics, plots and the adapter.</summary>
    public bool IsRoot => _communicator.Rank == 0;

    /// <summary>True with more than one rank.</summary>
    public bool IsDistributed => _communicator.Size > 1;

    /// <summary>True once every rank has finished set-up (<see cref="BeginTraining"/>).</summary>
    public bool SetupComplete { get; private set; }

    /// <summary>The communicator a training session reduces its gradients over; null with a single rank.</summary>
    public ICommunicator? StepCommunicator => IsDistributed ? _communicator : null;

    /// <summary>
    /// <paramref name="options"/> as one process would see the global batch (batch_size × ranks): the view that decides
    /// steps per epoch, the schedule and the resume fingerprint, so a run can resume with another number of ranks when
    /// the global batch is the same.
    /// </summary>
    public TrainOptions GlobalView(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return IsDistributed ? options with { BatchSize = options.BatchSize * Ranks } : options;
    }

    /// <summary>Makes each loader of <paramref name="data"/> serve this rank's share of every global batch.</summary>
    public void Shard(PreparedData data)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (IsDistributed)
        {
            data.Train.UseShard(Rank, Ranks);
            data.Eval?.UseShard(Rank, Ranks);
        }
    }

    /// <summary>Sums <paramref name="values"/> over all ranks in place (identity with one rank).</summary>
    public void SumAcrossRanks(Span<double> values) => _communicator.AllReduceSum(values);

    /// <summary>
    /// Collective: returns when no rank failed so far; otherwise throws, on every rank, the
    /// <see cref="RankFailedException"/> of the lowest failed rank.
    /// </summary>
    /// <exception cref="RankFailedException">A rank failed during set-up.</exception>
    public void Agree()
    {
        if (IsDistributed && Exchange(null, 0) is { } failure)
        {
            throw failure;
        }
    }

    /// <summary>
    /// Collective: reports this rank's set-up failure to the others (who meet it in <see cref="Agree"/>); returns the
    /// exception every rank throws: the message of the lowest failed rank, prefixed with that rank.
    /// </summary>
    /// <param name="error">This rank's failure.</param>
    /// <param name="exitCode">The exit code it maps to (non-zero).</param>
    public RankFailedException FailTogether(Exception error, int exitCode)
    {
        ArgumentNullException.ThrowIfNull(error);
        ArgumentOutOfRangeException.ThrowIfZero(exitCode);
        return Exchange(error, exitCode) ?? throw new InvalidOperationException("A failed rank saw no failure.");
    }

    /// <summary>Collective: ends set-up; from here a failure on one rank aborts the job.</summary>
    /// <exception cref="RankFailedException">A rank failed during set-up.</exception>
    public void BeginTraining()
    {
        if (IsDistributed)
        {
            Agree();
            SetupComplete = true;
        }
    }

    /// <summary>
    /// Runs a set-up phase that writes shared files on rank 0 alone: rank 0 runs <paramref name="onRoot"/>, then every
    /// rank agrees, then rank 0's <paramref name="describe"/> (e.g. a path) is sent to the others, which run
    /// <paramref name="onOthers"/> with it to read what rank 0 wrote.
    /// </summary>
    public T RootFirst<T>(Func<T> onRoot, Func<T, string> describe, Func<string, T> onOthers)
    {
        ArgumentNullException.ThrowIfNull(onRoot);
        ArgumentNullException.ThrowIfNull(describe);
        ArgumentNullException.ThrowIfNull(onOthers);
        if (!IsDistributed)
        {
            return onRoot();
        }

        T result = IsRoot ? onRoot() : default!;
        Agree();
        string text = BroadcastText(IsRoot ? describe(result) : "", root: 0);
        return IsRoot ? result : onOthers(text);
    }

    /// <summary>Ends the job with <paramref name="exitCode"/> on every rank; does not return.</summary>
    public void Abort(int exitCode) => _communicator.Abort(exitCode);

    /// <inheritdoc />
    public void Dispose()
    {
        if (!ReferenceEquals(this, Single))
        {
            _communicator.Dispose();
        }
    }

    private RankFailedException? Exchange(Exception? error, int exitCode)
    {
        // One slot per rank: the exit code of a failed rank, 0 otherwise. The lowest failed rank speaks for all.
        var slots = new double[Ranks];
        slots[Rank] = error is null ? 0 : exitCode;
        _communicator.AllReduceSum(slots);
        int source = Array.FindIndex(slots, s => s != 0);
        if (source < 0)
        {
            return null;
        }

        string message = BroadcastText(source == Rank ? error!.Message.ReplaceLineEndings(" ") : "", source);
        return new RankFailedException((int)slots[source], source, Ranks, $"rank {source} of {Ranks}: {message}", source == Rank ? error : null);
    }

    private string BroadcastText(string text, int root)
    {
        byte[] bytes = Rank == root ? Encoding.UTF8.GetBytes(text) : [];
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, bytes.Length);
        _communicator.Broadcast(length, root);
        if (Rank != root)
        {
            bytes = new byte[BinaryPrimitives.ReadInt32LittleEndian(length)];
        }

        _communicator.Broadcast(bytes, root);
        return Encoding.UTF8.GetString(bytes);
    }
}

/// <summary>
/// A rank of a distributed run failed during set-up; every rank throws this with the same message and exit code.
/// </summary>
public sealed class RankFailedException : Onnx.Lora.LoraException
{
    /// <summary>Creates the exception.</summary>
    public RankFailedException(int exitCode, int failedRank, int ranks, string message, Exception? innerException)
        : base(message, innerException!)
    {
        ExitCode = exitCode;
        FailedRank = failedRank;
        Ranks = ranks;
    }

    /// <summary>The exit code of the failed rank's error, which every rank exits with.</summary>
    public int ExitCode { get; }

    /// <summary>The lowest rank that failed.</summary>
    public int FailedRank { get; }

    /// <summary>Ranks in the job.</summary>
    public int Ranks { get; }
}
