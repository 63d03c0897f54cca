namespace Onnx.Lora.Ir.IO;

/// <summary>
/// The files one verb has read (recorded by <see cref="InputFile"/> and by external data files as they open), so every
/// write of that verb can refuse to replace one of them: <c>cp</c>'s same-file check, by device + inode, which sees
/// through symbolic links, hard links, <c>..</c> and an input's own data file given as the output.
/// </summary>
/// <remarks>
/// NOTE: the scope flows with the async context (<see cref="AsyncLocal{T}"/>), so verbs run side by side in one process
/// (tests) do not see each other's inputs. Outside a scope nothing is recorded and nothing is refused.
/// </remarks>
public sealed class InputScope : IDisposable
{
    private static readonly AsyncLocal<InputScope?> s_current = new();
    private readonly InputScope? _outer;
    private readonly Lock _gate = new();
    private readonly List<(string Path, FileFacts Facts, string? RealPath)> _inputs = [];

    private InputScope(InputScope? outer) => _outer = outer;

    /// <summary>Starts recording the inputs of one verb; dispose it when the verb ends.</summary>
    public static InputScope Begin()
    {
        var scope = new InputScope(s_current.Value);
        s_current.Value = scope;
        return scope;
    }

    /// <summary>Records <paramref name="path"/> (opened as <paramref name="facts"/>) as an input of the current scope.</summary>
    public static void Register(string path, FileFacts facts)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (s_current.Value is not { } scope)
        {
            return;
        }

        string? real = facts.HasIdentity ? null : NativeFile.RealPath(path);
        lock (scope._gate)
        {
            scope._inputs.Add((path, facts, real));
        }
    }

    /// <summary>Throws when writing <paramref name="outputPath"/> would replace an input of the current scope.</summary>
    /// <exception cref="OutputConflictException"><paramref name="outputPath"/> is (a link to, or another name of) an input.</exception>
    public static void EnsureNotInput(string outputPath)
    {
        ArgumentNullException.ThrowIfNull(outputPath);
        if (s_current.Value is not { } scope)
        {
            return;
        }

        // A name that does not exist yet cannot be an input (inputs exist); a dangling link is replaced, not followed.
        if (NativeFile.Probe(outputPath) is not { } output)
        {
            return;
        }

        string? real = output.HasIdentity ? null : NativeFile.RealPath(outputPath);
        lock (scope._gate)
        {
            foreach ((string path, FileFacts facts, string? inputReal) in scope._inputs)
            {
                if (output.IsSameFile(facts) || (real is not null && real == inputReal))
                {
                    string how = Path.GetFullPath(outputPath) == Path.GetFullPath(path) ? "it is" : "it is the same file as";
                    throw new OutputConflictException($"Refusing to write '{outputPath}': {how} the input '{path}', which would be destroyed. Choose another output.");
                }
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (s_current.Value == this)
        {
            s_current.Value = _outer;
        }
    }
}
