using System.Runtime.InteropServices;
using System.Text;
using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Distributed;

/// <summary>
/// <see cref="ICommunicator"/> over MPI_COMM_WORLD of Open MPI (<c>libmpi.so.40</c>, Debian's <c>openmpi-bin</c>),
/// bound directly: MPI.NET 1.4.0 looks for Microsoft MPI's <c>msmpi.dll</c> and fails under Open MPI.
/// </summary>
/// <remarks>
/// NOTE: Open MPI's handles (MPI_COMM_WORLD, MPI_DOUBLE, MPI_SUM...) are the ADDRESSES of exported global objects
/// (<c>ompi_mpi_comm_world</c>, <c>ompi_mpi_double</c>, <c>ompi_mpi_op_sum</c>), so they are read with
/// <see cref="NativeLibrary.GetExport"/> rather than compiled in; MPICH's integer handles would need another table.
/// The library is opened with RTLD_GLOBAL (as mpi4py does): Open MPI's plugins resolve libmpi's symbols globally.
/// Errors keep MPI's default handler, MPI_ERRORS_ARE_FATAL: a dead peer aborts the whole job instead of returning.
/// </remarks>
public sealed unsafe class MpiCommunicator : ICommunicator
{
    /// <summary>The Open MPI library loaded unless <c>ONNX_LORA_MPI_LIBRARY</c> names another.</summary>
    public const string DefaultLibrary = "libmpi.so.40";

    private const int ThreadMultiple = 3; // MPI_THREAD_MULTIPLE in Open MPI's mpi.h (the heartbeat has its own thread).
    private static readonly nint s_inPlace = 1; // MPI_IN_PLACE in Open MPI's mpi.h.

    private readonly nint _world;
    private readonly nint _double;
    private readonly nint _float;
    private readonly nint _byte;
    private readonly nint _sum;
    private readonly delegate* unmanaged<nint, void*, int, nint, nint, nint, int> _allreduce;
    private readonly delegate* unmanaged<void*, int, nint, int, nint, int> _bcast;
    private readonly delegate* unmanaged<nint, int> _barrier;
    private readonly delegate* unmanaged<nint, int, int> _abort;
    private readonly delegate* unmanaged<int> _finalize;
    private readonly MpiHeartbeat? _heartbeat;
    private bool _finalized;

    private MpiCommunicator(nint library, int localRank, TimeSpan heartbeatTimeout, TextWriter? error)
    {
        nint Export(string name) => NativeLibrary.TryGetExport(library, name, out nint address) ? address
            : throw new ConfigException($"The MPI library has no symbol '{name}': only Open MPI (libmpi.so.40) is supported.");

        _world = Export("ompi_mpi_comm_world");
        _double = Export("ompi_mpi_double");
        _float = Export("ompi_mpi_float");
        _byte = Export("ompi_mpi_byte");
        _sum = Export("ompi_mpi_op_sum");
        _allreduce = (delegate* unmanaged<nint, void*, int, nint, nint, nint, int>)Export("MPI_Allreduce");
        _bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Export("MPI_Bcast");
        _barrier = (delegate* unmanaged<nint, int>)Export("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)Export("MPI_Abort");
        _finalize = (delegate* unmanaged<int>)Export("MPI_Finalize");
        var initThread = (delegate* unmanaged<int*, byte***, int, int*, int>)Export("MPI_Init_thread");
        var commRank = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_rank");
        var commSize = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_size");

        int provided;
        Check(initThread(null, null, ThreadMultiple, &provided), "MPI_Init_thread");
        int rank;
        int size;
        Check(commRank(_world, &rank), "MPI_Comm_rank");
        Check(commSize(_world, &size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
        LocalRank = localRank;
        if (size > 1 && heartbeatTimeout > TimeSpan.Zero && provided >= ThreadMultiple)
        {
            _heartbeat = new MpiHeartbeat(Export, _world, rank, size, heartbeatTimeout, (message, code) =>
            {
                error?.WriteLine($"onnx-lora train: error: rank {Rank} of {Size}: {message}");
                error?.Flush();
                AbortFromAnyThread(code);
            });
        }
    }

    /// <inheritdoc />
    public int Rank { get; }

    /// <inheritdoc />
    public int Size { get; }

    /// <inheritdoc />
    public int LocalRank { get; }

    /// <summary>
    /// The size of the job this process was started in by <c>mpirun</c> / <c>srun</c>, read from the environment
    /// (Open MPI's OMPI_COMM_WORLD_SIZE, PMI's PMI_SIZE), or null when it was not started by an MPI launcher; reading it
    /// loads nothing, so a plain <c>onnx-lora train</c> never touches libmpi.
    /// </summary>
    public static int? LaunchedSize()
    {
        string? size = Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") ?? Environment.GetEnvironmentVariable("PMI_SIZE");
        return int.TryParse(size, out int n) && n > 0 ? n : null;
    }

    /// <summary>
    /// Loads the MPI library, initializes MPI (MPI_Init_thread) and starts the heartbeat: a rank silent for
    /// <c>ONNX_LORA_HEARTBEAT_TIMEOUT</c> seconds (default 10; 0 turns it off) ends the job (<see cref="MpiHeartbeat"/>).
    /// </summary>
    /// <param name="error">Where the heartbeat reports a lost rank before it aborts the job.</param>
    /// <exception cref="ConfigException">The library cannot be loaded or is not Open MPI, or the timeout is not a number.</exception>
    public static MpiCommunicator Create(TextWriter? error = null)
    {
        string library = Environment.GetEnvironmentVariable("ONNX_LORA_MPI_LIBRARY") ?? DefaultLibrary;
        string timeout = Environment.GetEnvironmentVariable("ONNX_LORA_HEARTBEAT_TIMEOUT") ?? "10";
        if (!double.TryParse(timeout, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double seconds) || seconds < 0 || !double.IsFinite(seconds))
        {
            throw new ConfigException($"ONNX_LORA_HEARTBEAT_TIMEOUT is '{timeout}'; expected seconds ≥ 0 (0 turns the heartbeat off).");
        }

        nint handle = OpenGlobal(library);
        string? local = Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_RANK") ?? Environment.GetEnvironmentVariable("MPI_LOCALRANKID");
        return new MpiCommunicator(handle, int.TryParse(local, out int localRank) ? localRank : 0, TimeSpan.FromSeconds(seconds), error);
    }

    /// <inheritdoc />
    public void AllReduceSum(Span<double> values)
    {
        fixed (double* p = values)
        {
            for (int offset = 0; offset < values.Length; offset += MaxCount)
            {
                Check(_allreduce(s_inPlace, p + offset, Math.Min(MaxCount, values.Length - offset), _double, _sum, _world), "MPI_Allreduce");
            }
        }
    }

    /// <inheritdoc />
    public void AllReduceSum(Span<float> values)
    {
        fixed (float* p = values)
        {
            for (int offset = 0; offset < values.Length; offset += MaxCount)
            {
                Check(_allreduce(s_inPlace, p + offset, Math.Min(MaxCount, values.Length - offset), _float, _sum, _world), "MPI_Allreduce");
            }
        }
    }

    /// <inheritdoc />
    public void Broadcast(Span<byte> data, int root)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(root);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(root, Size);
        fixed (byte* p = data)
        {
            for (int offset = 0; offset < data.Length; offset += MaxCount)
            {
                Check(_bcast(p + offset, Math.Min(MaxCount, data.Length - offset), _byte, root, _world), "MPI_Bcast");
            }
        }
    }

    /// <inheritdoc />
    public void Barrier() => Check(_barrier(_world), "MPI_Barrier");

    /// <inheritdoc />
    public void Abort(int exitCode)
    {
        _abort(_world, exitCode);
        Environment.Exit(exitCode); // MPI_Abort does not return; this only runs if the library broke that promise.
    }

    /// <summary>MPI_Finalize (a clean end: every rank must call it).</summary>
    public void Dispose()
    {
        if (!_finalized)
        {
            _finalized = true;
            _heartbeat?.Dispose();
            _finalize();
        }
    }

    private void AbortFromAnyThread(int exitCode)
    {
        // MPI_Abort may wait on a machine that is gone; the process ends a few seconds later regardless, and mpirun
        // then ends the ranks that remain.
        var fallback = new Thread(() =>
        {
            Thread.Sleep(3000);
            Environment.FailFast($"MPI_Abort did not end the process; exiting (code {exitCode}).");
        }) { IsBackground = true };
        fallback.Start();
        _abort(_world, exitCode);
    }

    // MPI counts are C ints; buffers past 2^30 elements go in pieces (LoRA gradients are far smaller).
    private const int MaxCount = 1 << 30;

    private static void Check(int code, string call)
    {
        if (code != 0)
        {
            throw new InvalidOperationException($"{call} failed with MPI error code {code}.");
        }
    }

    private static nint OpenGlobal(string library)
    {
        const int RtldNow = 2;
        const int RtldGlobal = 0x100;
        nint libc = NativeLibrary.Load("libc.so.6");
        var dlopen = (delegate* unmanaged<byte*, int, nint>)NativeLibrary.GetExport(libc, "dlopen");
        byte[] name = Encoding.UTF8.GetBytes(library + "\0");
        nint handle;
        fixed (byte* p = name)
        {
            handle = dlopen(p, RtldNow | RtldGlobal);
        }

        if (handle == 0)
        {
            var dlerror = (delegate* unmanaged<byte*>)NativeLibrary.GetExport(libc, "dlerror");
            string why = Marshal.PtrToStringUTF8((nint)dlerror()) ?? "unknown error";
            throw new ConfigException($"This process was started by an MPI launcher, but the MPI library '{library}' cannot be loaded ({why}); install Open MPI (apt-get install openmpi-bin libopenmpi-dev) or set ONNX_LORA_MPI_LIBRARY.");
        }

        return handle;
    }
}
