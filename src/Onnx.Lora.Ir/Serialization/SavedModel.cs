namespace Onnx.Lora.Ir.Serialization;

/// <summary>What <see cref="OnnxWriter.Save"/> wrote: the model file and, in single-file mode, where each tensor went.</summary>
public sealed class SavedModel
{
    private readonly IReadOnlyDictionary<Tensor, (long Offset, long Length)> _written;
    private readonly string? _dataLocation;

    internal SavedModel(string modelPath, string? dataPath, string? dataLocation, IReadOnlyDictionary<Tensor, (long Offset, long Length)> written)
    {
        ModelPath = modelPath;
        DataPath = dataPath;
        _dataLocation = dataLocation;
        _written = written;
    }

    /// <summary>Full path of the model file.</summary>
    public string ModelPath { get; }

    /// <summary>Full path of the data file written with it; null when none was (inline or kept external data).</summary>
    public string? DataPath { get; }

    /// <summary>The same save after its files were moved, unchanged, into <paramref name="folder"/>.</summary>
    public SavedModel MovedTo(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string full = Path.GetFullPath(folder);
        return new SavedModel(Path.Combine(full, Path.GetFileName(ModelPath)), DataPath is null ? null : Path.Combine(full, Path.GetFileName(DataPath)), _dataLocation, _written);
    }

    /// <summary>Tensors written into <see cref="DataPath"/>.</summary>
    public int ExternalTensorCount => _written.Count;

    /// <summary>
    /// Points each main-graph initializer of <paramref name="model"/> that holds a tensor this save wrote into
    /// <see cref="DataPath"/> (the same tensor object, e.g. in a <see cref="Model.Copy"/> of the saved model) at those
    /// bytes of the file instead: memory-mapped on use, no copy, no managed memory. A second graph of the same weights
    /// then saves with <see cref="ExternalDataMode.Keep"/> into the same folder and shares the data file, and a model
    /// kept in memory stops holding its weights on the managed heap. <paramref name="model"/> takes ownership of the
    /// opened file.
    /// </summary>
    /// <returns>Number of initializers now reading the data file.</returns>
    /// <exception cref="OnnxSerializationException">The data file can no longer be opened.</exception>
    public int ReferenceWrittenData(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var matches = model.Graph.Initializers.Values.Where(v => _written.ContainsKey(v.Initializer!)).ToArray();
        if (matches.Length == 0 || DataPath is null)
        {
            return 0;
        }

        ExternalDataFile file;
        try
        {
            file = new ExternalDataFile(DataPath, DataPath, _dataLocation!);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OnnxSerializationException($"Cannot reopen the data file '{DataPath}' just written: {e.Message}", e);
        }

        model.AdoptDataFile(file);
        foreach (Value value in matches)
        {
            Tensor tensor = value.Initializer!;
            (long offset, long length) = _written[tensor];
            var external = new ExternalTensor(tensor.Name, tensor.DataType, tensor.Dims, file, offset, length) { DocString = tensor.DocString, UnknownFields = tensor.UnknownFields };
            external.MetadataProps.AddRange(tensor.MetadataProps);
            model.Graph.Initializers.SetData(value.Name, external);
        }

        return matches.Length;
    }
}
