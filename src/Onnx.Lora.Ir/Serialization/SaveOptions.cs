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

    /// <summary>
    /// How every verb writes a model derived from a loaded one (merged, serving, trained, GenAI): when the source kept
    /// its weights in external data (real models, past protobuf's 2 GiB), all of them go into one new data file
    /// "&lt;output file name&gt;.data" beside the output, streamed tensor by tensor; otherwise inline, as the source was.
    /// </summary>
    /// <param name="outputPath">The model file to write (its file name names the data file).</param>
    /// <param name="source">The model the output was derived from (in memory, possibly rewritten).</param>
    /// <param name="progress">Told after each tensor.</param>
    /// <param name="cancellationToken">Stops the save between tensors.</param>
    public static SaveOptions Like(string outputPath, Model source, IProgress<SaveProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        return Like(outputPath, source.DataFiles.Count > 0, progress, cancellationToken);
    }

    /// <summary>As <see cref="Like(string, Model, IProgress{SaveProgress}?, CancellationToken)"/>, with the choice of external data given.</summary>
    public static SaveOptions Like(string outputPath, bool externalData, IProgress<SaveProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(outputPath);
        return externalData
            ? new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = Path.GetFileName(outputPath) + ".data", Progress = progress, CancellationToken = cancellationToken }
            : new SaveOptions { ExternalData = ExternalDataMode.Inline, Progress = progress, CancellationToken = cancellationToken };
    }

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
