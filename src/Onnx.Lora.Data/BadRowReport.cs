namespace Onnx.Lora.Data;

/// <summary>
/// The bad rows of one data file: every row is validated before training, all are counted, and the first few are
/// listed (each cut to one readable line) in the single error the run stops with.
/// </summary>
internal sealed class BadRowReport(string path, int maxListed)
{
    // One row's error (a JSON parser message can quote much of the row) is cut to this many chars.
    private const int MaxErrorChars = 240;
    private readonly List<string> _listed = [];

    /// <summary>How many rows were bad.</summary>
    public int Count { get; private set; }

    /// <summary>Records the error of the row at <paramref name="where"/> (<c>file:line</c>).</summary>
    public void Add(string where, DataException error)
    {
        Count++;
        if (_listed.Count < maxListed)
        {
            string message = error.Message.StartsWith(where, StringComparison.Ordinal) ? error.Message : $"{where}: {error.Message}";
            _listed.Add(message.Length <= MaxErrorChars ? message : message[..(MaxErrorChars - 1)] + "…");
        }
    }

    /// <summary>Throws one error listing the bad rows, when there were any.</summary>
    /// <param name="hint">A line added at the end (e.g. how many rows were too long), or empty.</param>
    /// <exception cref="DataException">At least one row was bad.</exception>
    public void ThrowIfAny(string hint = "")
    {
        if (Count == 0)
        {
            return;
        }

        string more = Count > _listed.Count ? $"{Environment.NewLine}  ... and {Count - _listed.Count} more" : "";
        throw new DataException($"{Count} bad row(s) in '{path}':{Environment.NewLine}  " + string.Join(Environment.NewLine + "  ", _listed) + more + hint);
    }
}
