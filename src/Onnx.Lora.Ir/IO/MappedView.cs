using System.IO.MemoryMappedFiles;
using Microsoft.Win32.SafeHandles;

namespace Onnx.Lora.Ir.IO;

/// <summary>
/// A read-only memory map of a whole file with its first byte pinned as a pointer: the one place that creates the
/// map, the view and the pointer, and releases them in the reverse order. Readers view tensor bytes through it
/// without copying them.
/// </summary>
public sealed unsafe class MappedView : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private bool _disposed;

    private MappedView(MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer)
    {
        _map = map;
        _view = view;
        Pointer = pointer;
    }

    /// <summary>The file's first byte; valid until <see cref="Dispose"/>.</summary>
    public byte* Pointer { get; }

    /// <summary>Maps the file at <paramref name="path"/>.</summary>
    public static MappedView Open(string path) =>
        Create(MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read));

    /// <summary>Maps the file open as <paramref name="handle"/>; the handle stays open and owned by the caller.</summary>
    public static MappedView Open(SafeFileHandle handle)
    {
        var stream = new FileStream(handle, FileAccess.Read, 1);
        return Create(MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true));
    }

    /// <summary>Releases the pointer, the view and the map.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }

    private static MappedView Create(MemoryMappedFile map)
    {
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            return new MappedView(map, view, p + view.PointerOffset);
        }
        catch
        {
            view?.Dispose();
            map.Dispose();
            throw;
        }
    }
}
