namespace Onnx.Lora.Cli;

/// <summary>Process exit codes of the onnx-lora command; scripts branch on them, so they never change meaning.</summary>
internal static class ExitCodes
{
    /// <summary>Done.</summary>
    public const int Success = 0;

    /// <summary>The command line, an option value or a config file is invalid; the message says which and why.</summary>
    public const int InvalidInput = 2;

    /// <summary>A guard stopped the run (NaN loss, out-of-vocabulary ids...).</summary>
    public const int GuardTripped = 3;

    /// <summary>A model file (ONNX protobuf or its external data) is unreadable or inconsistent.</summary>
    public const int BadModel = 4;

    /// <summary>An adapter file (safetensors, .onnx_adapter, adapter_config.json) is unreadable or does not fit the model.</summary>
    public const int BadAdapter = 5;

    /// <summary>A dataset (JSONL) or tokenizer file is unreadable or inconsistent.</summary>
    public const int BadData = 6;

    /// <summary>The job would need more memory or disk than available; the message has the estimate.</summary>
    public const int ResourceLimit = 7;

    /// <summary>The execution provider asked for cannot start: the CPU build lacks it, or CUDA / cuDNN / TensorRT libraries are missing.</summary>
    public const int ProviderUnavailable = 8;

    /// <summary>
    /// A rank of an <c>mpirun</c> job went silent (frozen process, lost machine or network): the heartbeat of another
    /// rank ended the job (Trainer.Distributed.MpiHeartbeat.ExitCode).
    /// </summary>
    public const int RankLost = 9;

    /// <summary>
    /// An output could not be written (disk full, read-only folder, the path is a directory or lies under a file); no
    /// input is at fault. sysexits' EX_IOERR.
    /// </summary>
    public const int IoError = 74;

    /// <summary>An internal error; a bug.</summary>
    public const int InternalError = 70;

    /// <summary>Stopped by the user (Ctrl-C) after saving what could be saved.</summary>
    public const int Cancelled = 130;
}
