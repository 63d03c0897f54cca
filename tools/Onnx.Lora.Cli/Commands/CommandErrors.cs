using Onnx.Lora.Graph;

namespace Onnx.Lora.Cli.Commands;

/// <summary>Minimal shared error handling for the exporter verbs (to be replaced by the common helper when it lands): a LoraException is a user error, printed without a stack trace.</summary>
internal static class CommandErrors
{
    public static int Run(Action action)
    {
        try
        {
            action();
            return ExitCodes.Success;
        }
        catch (LoraException e)
        {
            Console.Error.WriteLine("error: " + e.Message);
            return ExitCodes.InvalidInput;
        }
    }
}
