using System.Runtime.InteropServices;

namespace Onnx.Lora.Cli;

/// <summary>
/// Turns SIGINT, SIGTERM and SIGHUP into a cancelled token for the running verb, so it stops at its next safe point
/// (train: after the step, with a checkpoint; a save: between tensors, deleting its temporaries) and exits 130. A second
/// signal is not intercepted: it ends the process at once, as a user pressing Ctrl-C twice expects.
/// </summary>
/// <remarks>
/// NOTE: System.CommandLine registers its own termination handler only once a verb's task is returned, which for a
/// synchronous verb (train, merge) is after the work is done: until then a signal killed the process outright.
/// </remarks>
internal sealed class SignalCancellation : IDisposable
{
    private readonly CancellationTokenSource _source;
    private readonly PosixSignalRegistration[] _registrations;
    private int _received;

    /// <summary>Starts intercepting the signals; the token is also cancelled with <paramref name="outer"/>.</summary>
    public SignalCancellation(CancellationToken outer)
    {
        _source = CancellationTokenSource.CreateLinkedTokenSource(outer);
        _registrations = [.. new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP }.Select(s => PosixSignalRegistration.Create(s, OnSignal))];
    }

    /// <summary>Cancelled by the first signal.</summary>
    public CancellationToken Token => _source.Token;

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (PosixSignalRegistration registration in _registrations)
        {
            registration.Dispose();
        }

        _source.Dispose();
    }

    private void OnSignal(PosixSignalContext context)
    {
        if (Interlocked.Increment(ref _received) > 1)
        {
            return;
        }

        context.Cancel = true;
        _source.Cancel();
    }
}
