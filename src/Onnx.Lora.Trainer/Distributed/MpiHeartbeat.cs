using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Onnx.Lora.Trainer.Distributed;

/// <summary>
/// Detects a rank that stopped answering (process frozen, machine or network lost) while the others wait in a
/// collective that would otherwise never return: every rank sends a tiny message to the next rank once a second on a
/// private duplicate of MPI_COMM_WORLD, from its own thread; a rank that hears nothing from the previous rank for
/// <see cref="Timeout"/> prints why and aborts the job. A rank whose process dies is caught sooner by mpirun itself.
/// </summary>
/// <remarks>
/// NOTE: needs MPI_THREAD_MULTIPLE (Debian's Open MPI provides it). A rank that ends normally sends a last "leaving"
/// message so its successor stops watching it (rank 0 may still write the adapter while the others finalize).
/// </remarks>
internal sealed unsafe class MpiHeartbeat : IDisposable
{
    /// <summary>Exit code of a job ended because a rank went silent (the CLI's ExitCodes.RankLost).</summary>
    public const int ExitCode = 9;

    private const int Tag = 7401;
    private readonly nint _comm;
    private readonly nint _int;
    private readonly int _next;
    private readonly int _previous;
    private readonly delegate* unmanaged<void*, int, nint, int, int, nint, int> _send;
    private readonly delegate* unmanaged<void*, int, nint, int, int, nint, nint*, int> _irecv;
    private readonly delegate* unmanaged<nint*, int*, void*, int> _test;
    private readonly delegate* unmanaged<nint*, int> _cancel;
    private readonly delegate* unmanaged<nint*, void*, int> _wait;
    private readonly Action<string, int> _abort;
    private readonly Thread _thread;
    private readonly int* _inbox;
    private volatile bool _stopping;

    public MpiHeartbeat(Func<string, nint> export, nint world, int rank, int size, TimeSpan timeout, Action<string, int> abort)
    {
        Timeout = timeout;
        _abort = abort;
        _next = (rank + 1) % size;
        _previous = (rank + size - 1) % size;
        _int = export("ompi_mpi_int");
        _send = (delegate* unmanaged<void*, int, nint, int, int, nint, int>)export("MPI_Send");
        _irecv = (delegate* unmanaged<void*, int, nint, int, int, nint, nint*, int>)export("MPI_Irecv");
        _test = (delegate* unmanaged<nint*, int*, void*, int>)export("MPI_Test");
        _cancel = (delegate* unmanaged<nint*, int>)export("MPI_Cancel");
        _wait = (delegate* unmanaged<nint*, void*, int>)export("MPI_Wait");
        var dup = (delegate* unmanaged<nint, nint*, int>)export("MPI_Comm_dup");
        nint comm;
        if (dup(world, &comm) != 0)
        {
            throw new InvalidOperationException("MPI_Comm_dup failed.");
        }

        _comm = comm;
        _inbox = (int*)NativeMemory.Alloc(sizeof(int)); // Written by MPI while a receive is posted: never moves.
        _thread = new Thread(Beat) { IsBackground = true, Name = "mpi-heartbeat" };
        _thread.Start();
    }

    /// <summary>Silence after which the previous rank is taken for lost.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Says "leaving" to the next rank and stops; call before MPI_Finalize.</summary>
    public void Dispose()
    {
        _stopping = true;
        _thread.Join();
        NativeMemory.Free(_inbox);
    }

    private void Beat()
    {
        nint request;
        _irecv(_inbox, 1, _int, _previous, Tag, _comm, &request);
        var heard = Stopwatch.StartNew();
        var sent = Stopwatch.StartNew();
        bool previousLeft = false;
        int alive = 1;
        _send(&alive, 1, _int, _next, Tag, _comm);
        while (!_stopping)
        {
            Thread.Sleep(100);
            if (sent.Elapsed >= TimeSpan.FromSeconds(1))
            {
                _send(&alive, 1, _int, _next, Tag, _comm);
                sent.Restart();
            }

            int done = 0;
            while (!previousLeft && _test(&request, &done, null) == 0 && done != 0)
            {
                heard.Restart();
                previousLeft = *_inbox == 0;
                if (!previousLeft)
                {
                    _irecv(_inbox, 1, _int, _previous, Tag, _comm, &request);
                }
            }

            if (!previousLeft && heard.Elapsed > Timeout)
            {
                _abort($"rank {_previous} has not been heard from for {Timeout.TotalSeconds:F0} s (its process is frozen or its machine or network is lost); ending all ranks.", ExitCode);
                return;
            }
        }

        int leaving = 0;
        _send(&leaving, 1, _int, _next, Tag, _comm);
        if (!previousLeft)
        {
            _cancel(&request);
            _wait(&request, null);
        }
    }
}
