namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Counts the ONNX files <see cref="OnnxReader"/> parses on the current logical flow (this thread and the tasks it
/// starts) while the counter is open: the check that a verb reads its model once.
/// </summary>
/// <remarks>
/// NOTE: scoped with <see cref="AsyncLocal{T}"/>, not a static count, so tests running in parallel never see each
/// other's reads. Counters nest: a read is recorded by every open counter of the flow.
/// </remarks>
public sealed class OnnxReadCounter : IDisposable
{
    private static readonly AsyncLocal<OnnxReadCounter?> s_current = new();
    private readonly OnnxReadCounter? _outer;
    private readonly List<string> _paths = [];
    private readonly Lock _gate = new();
    private bool _disposed;

    private OnnxReadCounter(OnnxReadCounter? outer) => _outer = outer;

    /// <summary>Full paths of the files read, in order (a file read twice appears twice; bytes read as "&lt;memory&gt;").</summary>
    public IReadOnlyList<string> Paths
    {
        get
        {
            lock (_gate)
            {
                return [.. _paths];
            }
        }
    }

    /// <summary>Number of models parsed.</summary>
    public int Count => Paths.Count;

    /// <summary>How often the file at <paramref name="path"/> was read.</summary>
    public int ReadsOf(string path)
    {
        string full = Path.GetFullPath(path);
        return Paths.Count(p => p == full);
    }

    /// <summary>Starts counting on the current flow until the counter is disposed.</summary>
    public static OnnxReadCounter Start()
    {
        var counter = new OnnxReadCounter(s_current.Value);
        s_current.Value = counter;
        return counter;
    }

    internal static void Record(string fullPath)
    {
        for (OnnxReadCounter? c = s_current.Value; c is not null; c = c._outer)
        {
            if (!c._disposed)
            {
                lock (c._gate)
                {
                    c._paths.Add(fullPath);
                }
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _disposed = true;
        if (ReferenceEquals(s_current.Value, this))
        {
            s_current.Value = _outer;
        }
    }
}
