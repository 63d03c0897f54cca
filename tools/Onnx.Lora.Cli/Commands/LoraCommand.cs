using System.CommandLine;
using Onnx.Lora.Graph;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// Base of every verb: runs <see cref="ExecuteAsync"/> and turns expected failures (bad model, bad option, missing
/// file) into one clear line on stderr and <see cref="ExitCodes.InvalidInput"/>, never a stack trace.
/// </summary>
internal abstract class LoraCommand : Command
{
    protected LoraCommand(string name, string description) : base(name, description)
    {
        SetAction(RunAsync);
    }

    /// <summary>The verb itself; writes results to <paramref name="output"/>.</summary>
    protected abstract Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken);

    private async Task<int> RunAsync(ParseResult parse, CancellationToken cancellationToken)
    {
        TextWriter output = parse.InvocationConfiguration.Output;
        TextWriter error = parse.InvocationConfiguration.Error;
        try
        {
            return await ExecuteAsync(parse, output, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await error.WriteLineAsync($"onnx-lora {Name}: cancelled.").ConfigureAwait(false);
            return ExitCodes.Cancelled;
        }
        catch (Exception e) when (e is LoraException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException or IOException)
        {
            await error.WriteLineAsync($"onnx-lora {Name}: error: {OneLine(e.Message)}").ConfigureAwait(false);
            return ExitCodes.InvalidInput;
        }
#pragma warning disable CA1031 // A bug must still end in one line and a named exit code, not a stack trace.
        catch (Exception e)
#pragma warning restore CA1031
        {
            await error.WriteLineAsync($"onnx-lora {Name}: internal error ({e.GetType().Name}): {OneLine(e.Message)}").ConfigureAwait(false);
            return ExitCodes.InternalError;
        }
    }

    private static string OneLine(string message) => message.ReplaceLineEndings(" ");
}
