namespace Onnx.Lora.Ir.Serialization;

/// <summary>Where tensor bytes go when a model is saved.</summary>
public enum ExternalDataMode
{
    /// <summary>Keep external tensors where they are when the model is saved into their folder; otherwise behave as <see cref="SingleFile"/>.</summary>
    Auto,

    /// <summary>External tensors keep their file, offset and length (the model must be saved into the folder of those files).</summary>
    Keep,

    /// <summary>Every tensor of at least <see cref="SaveOptions.SizeThreshold"/> bytes is streamed into one new data file beside the model.</summary>
    SingleFile,

    /// <summary>Every tensor goes into the .onnx file itself (fails past protobuf's 2 GiB limit).</summary>
    Inline,
}

/// <summary>How to save a model.</summary>
public sealed record SaveOptions
{
    /// <summary>Default options: keep external data when possible.</summary>
    public static SaveOptions Default { get; } = new();

    /// <summary>Where tensor bytes go.</summary>
    public ExternalDataMode ExternalData { get; init; } = ExternalDataMode.Auto;

    /// <summary>Data file name for <see cref="ExternalDataMode.SingleFile"/>; default "&lt;model file name&gt;.data".</summary>
    public string? DataFileName { get; init; }

    /// <summary>Tensors smaller than this stay inline in <see cref="ExternalDataMode.SingleFile"/> mode.</summary>
    public long SizeThreshold { get; init; } = 1024;

    /// <summary>Told, synchronously on the saving thread, after each tensor is written (for a progress bar on long saves).</summary>
    public IProgress<SaveProgress>? Progress { get; init; }

    /// <summary>
    /// Checked before each tensor is written: a cancelled save (Ctrl-C, SIGTERM) stops with
    /// <see cref="OperationCanceledException"/>, and its temporary files are deleted.
    /// </summary>
    public CancellationToken CancellationToken { get; init; }
}

/// <summary>How far a save has got.</summary>
/// <param name="BytesWritten">Tensor bytes written so far.</param>
/// <param name="TotalBytes">Tensor bytes the save writes in all (kept external references excluded).</param>
public readonly record struct SaveProgress(long BytesWritten, long TotalBytes);
