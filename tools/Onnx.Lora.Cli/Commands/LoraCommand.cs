using System.CommandLine;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Data;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// Base of every verb: runs <see cref="ExecuteAsync"/> and turns expected failures (bad model, bad adapter, bad data,
/// bad option, missing file) into one clear line on stderr and the exit code of that kind of input
/// (<see cref="ExitCodeFor"/>), never a stack trace unless <c>--verbose</c> asks for one.
/// </summary>
internal abstract class LoraCommand : Command
{
    private readonly List<InputPath> _inputs = [];

    protected LoraCommand(string name, string description) : base(name, description)
    {
        SetAction(RunAsync);
    }

    /// <summary>The verb itself; writes results to <paramref name="output"/>.</summary>
    protected abstract Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken);

    /// <summary>
    /// The exit code for an expected failure: the kind of input at fault decides it, so scripts can tell a broken model
    /// (4) from a broken adapter (5) or dataset (6) without parsing the message.
    /// </summary>
    internal static int ExitCodeFor(Exception e) => e switch
    {
        Trainer.Distributed.RankFailedException r => r.ExitCode, // Another rank's failure: its code, on every rank.
        OutputWriteException => ExitCodes.IoError,
        // A checkpoint that could not be saved (disk full, folder gone read-only mid-run) is a failed write too.
        CheckpointException { InnerException: UnauthorizedAccessException or (IOException and not FileNotFoundException and not DirectoryNotFoundException) } => ExitCodes.IoError,
        OutputConflictException or InputNotFoundException => ExitCodes.InvalidInput,
        OnnxSerializationException => ExitCodes.BadModel,
        AdapterFormatException or AdapterMismatchException => ExitCodes.BadAdapter,
        DataException => ExitCodes.BadData,
        ResourceLimitException or OutOfMemoryException => ExitCodes.ResourceLimit,
        TrainingGuardException => ExitCodes.GuardTripped,
        Trainer.Gpu.ExecutionProviderException => ExitCodes.ProviderUnavailable,
        // A raw I/O error that no reader claimed: a missing input is the user's path, anything else failed a write.
        FileNotFoundException or DirectoryNotFoundException => ExitCodes.InvalidInput,
        IOException or UnauthorizedAccessException => ExitCodes.IoError,
        _ => ExitCodes.InvalidInput,
    };

    private async Task<int> RunAsync(ParseResult parse, CancellationToken cancellationToken)
    {
        TextWriter output = parse.InvocationConfiguration.Output;
        TextWriter error = parse.InvocationConfiguration.Error;
        bool verbose = parse.GetValue(GlobalOptions.Verbose);
        // Every file the verb reads is recorded here, so none of its outputs can replace one (cp's same-file check).
        using var inputs = Onnx.Lora.Ir.IO.InputScope.Begin();
        using var signals = new SignalCancellation(cancellationToken);
        try
        {
            InputPaths.EnsureExist(parse, _inputs);
            return await ExecuteAsync(parse, output, signals.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await error.WriteLineAsync($"onnx-lora {Name}: cancelled.").ConfigureAwait(false);
            return ExitCodes.Cancelled;
        }
        catch (Exception e) when (e is ToolchainException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException)
        {
            await error.WriteLineAsync($"onnx-lora {Name}: error: {OneLine(e.Message)}").ConfigureAwait(false);
            await WriteDetailsAsync(error, e, verbose).ConfigureAwait(false);
            return ExitCodeFor(e);
        }
        catch (Microsoft.ML.OnnxRuntime.OnnxRuntimeException e) when (IsModelLoadError(e))
        {
            // A verb that hands the file straight to ONNX Runtime (generate) sees a broken model as ORT's load error.
            await error.WriteLineAsync($"onnx-lora {Name}: error: ONNX Runtime cannot load the model: {OneLine(e.Message)}").ConfigureAwait(false);
            await WriteDetailsAsync(error, e, verbose).ConfigureAwait(false);
            return ExitCodes.BadModel;
        }
        catch (OutOfMemoryException e)
        {
            // NOTE: readers check declared sizes before allocating; this is the last line for a job that is simply too big.
            await error.WriteLineAsync($"onnx-lora {Name}: error: out of memory ({OneLine(e.Message)}); the job needs more memory than this machine has.").ConfigureAwait(false);
            await WriteDetailsAsync(error, e, verbose).ConfigureAwait(false);
            return ExitCodes.ResourceLimit;
        }
#pragma warning disable CA1031 // A bug must still end in one line and a named exit code, not a stack trace.
        catch (Exception e)
#pragma warning restore CA1031
        {
            await error.WriteLineAsync($"onnx-lora {Name}: internal error ({e.GetType().Name}): {OneLine(e.Message)}").ConfigureAwait(false);
            await WriteDetailsAsync(error, e, verbose).ConfigureAwait(false);
            return ExitCodes.InternalError;
        }
    }

    // NOTE: ORT's C# exception exposes its error code only in the message ("[ErrorCode:InvalidProtobuf] ...").
    private static bool IsModelLoadError(Microsoft.ML.OnnxRuntime.OnnxRuntimeException e) =>
        e.Message.StartsWith("[ErrorCode:InvalidProtobuf]", StringComparison.Ordinal)
        || e.Message.StartsWith("[ErrorCode:InvalidGraph]", StringComparison.Ordinal)
        || e.Message.StartsWith("[ErrorCode:NoSuchFile]", StringComparison.Ordinal);

    private static async Task WriteDetailsAsync(TextWriter error, Exception e, bool verbose)
    {
        if (verbose)
        {
            await error.WriteLineAsync(e.ToString()).ConfigureAwait(false);
        }
    }

    private static string OneLine(string message) => MessageText.OneLine(message);

    /// <summary>Marks an argument or option as a file or folder that must exist: a missing one is a usage error (exit 2) named before any work.</summary>
    protected void MustExist(Symbol symbol, string what, bool folderAllowed = false) => _inputs.Add(new InputPath(symbol, what, folderAllowed));
}
