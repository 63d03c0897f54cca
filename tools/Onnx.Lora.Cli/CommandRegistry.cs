using System.CommandLine;
using Onnx.Lora.Cli.Commands;

namespace Onnx.Lora.Cli;

/// <summary>Every verb of the CLI; each lives in Commands/ as one sealed class.</summary>
internal static class CommandRegistry
{
    public static IEnumerable<Command> All()
    {
        // One line per verb.
        yield return new InspectCommand();
        yield return new InjectCommand();
        yield return new MergeCommand();
        yield return new ExportAdapterCommand();
        yield return new ConvertAdapterCommand();
        yield return new CombineCommand();
        yield return new ConvertLlama2cCommand();
        yield return new TrainCommand();
        yield return new GenerateCommand();
        yield return new GradientsCommand();
        yield return new EvalCommand();
    }
}
