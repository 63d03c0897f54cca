namespace Onnx.Lora.Ir;

/// <summary>
/// An ONNX model: the main graph, opset imports and metadata. A model loaded from a file owns the external
/// data files its tensors map; dispose it when done with the tensors.
/// </summary>
public sealed class Model : IDisposable
{
    private readonly List<ExternalDataFile> _dataFiles = [];

    /// <summary>Creates a model around <paramref name="graph"/>.</summary>
    public Model(Graph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        Graph = graph;
    }

    /// <summary>The main graph.</summary>
    public Graph Graph { get; set; }

    /// <summary>ONNX IR version.</summary>
    public long IrVersion { get; set; } = 8;

    /// <summary>Opset version per domain ("" is the default ONNX domain).</summary>
    public OrderedDictionary<string, long> OpsetImports { get; } = new(StringComparer.Ordinal);

    /// <summary>Producer name.</summary>
    public string? ProducerName { get; set; }

    /// <summary>Producer version.</summary>
    public string? ProducerVersion { get; set; }

    /// <summary>Model domain.</summary>
    public string? Domain { get; set; }

    /// <summary>Model version.</summary>
    public long ModelVersion { get; set; }

    /// <summary>Documentation string.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties, kept in order.</summary>
    public List<KeyValuePair<string, string>> MetadataProps { get; } = [];

    /// <summary>Serialized FunctionProto entries, kept as they were.</summary>
    public List<ReadOnlyMemory<byte>> Functions { get; } = [];

    /// <summary>Serialized TrainingInfoProto entries, kept as they were.</summary>
    public List<ReadOnlyMemory<byte>> TrainingInfo { get; } = [];

    /// <summary>Unknown protobuf fields, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    /// <summary>Folder the model was loaded from (external data locations are relative to it); null if built in memory.</summary>
    public string? BaseDirectory { get; internal set; }

    /// <summary>External data files this model's tensors read from.</summary>
    public IReadOnlyList<ExternalDataFile> DataFiles => _dataFiles;

    /// <summary>Opset of the default domain (0 if not imported).</summary>
    public long DefaultOpset => OpsetImports.GetValueOrDefault(string.Empty);

    /// <summary>Makes sure <paramref name="domain"/> is imported at least at <paramref name="version"/>.</summary>
    public void RequireOpset(string domain, long version)
    {
        if (!OpsetImports.TryGetValue(domain, out long current) || current < version)
        {
            OpsetImports[domain] = version;
        }
    }

    internal void AdoptDataFile(ExternalDataFile file) => _dataFiles.Add(file);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (ExternalDataFile file in _dataFiles)
        {
            file.Dispose();
        }
    }
}
