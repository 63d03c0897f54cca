namespace Onnx.Lora.Cli;

/// <summary>Process exit codes of the onnx-lora command.</summary>
internal static class ExitCodes
{
    /// <summary>Done.</summary>
    public const int Success = 0;

    /// <summary>The input (model, data, adapter, config) is invalid; the message says which and why.</summary>
    public const int InvalidInput = 2;

    /// <summary>Stopped by the user (Ctrl-C) after saving what could be saved.</summary>
    public const int Cancelled = 130;

    /// <summary>A guard stopped the run (NaN loss, out-of-vocabulary ids...).</summary>
    public const int GuardTripped = 3;

    /// <summary>An internal error; a bug.</summary>
    public const int InternalError = 70;
}
