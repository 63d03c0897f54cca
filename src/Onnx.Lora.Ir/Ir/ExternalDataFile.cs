using System.Buffers;
using System.IO.MemoryMappedFiles;

namespace Onnx.Lora.Ir;

/// <summary>
/// One external data file of a model. The file is memory-mapped on first access to tensor bytes, so opening a
/// model reads no weights; copying tensors to another file streams them through a small buffer instead.
/// </summary>
public sealed class ExternalDataFile : IDisposable
{
    private const int CopyChunk = 4 << 20;
    private readonly Lock _gate = new();
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _handle;
    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private unsafe byte* _base;
    private bool _disposed;

    internal ExternalDataFile(string fullPath, string resolvedPath, string location)
    {
        FullPath = fullPath;
        Location = location;

        // NOTE: the handle is opened once, at load: a later save that replaces this path (same model saved in
        // place) renames a new file over it, and this model must keep reading the bytes it was opened with.
        // Opened without blocking (a FIFO would hang the open) at the path already resolved; the caller refuses
        // anything that is not a regular file before a byte is read.
        _handle = IO.NativeFile.OpenForReading(resolvedPath);
        try
        {
            IO.FileFacts facts = IO.NativeFile.ProbeHandle(_handle, fullPath);
            Kind = facts.Kind;
            Length = facts.Kind == IO.FileKind.Regular ? facts.Size : 0;
            if (Kind == IO.FileKind.Regular)
            {
                IO.InputScope.Register(fullPath, facts);
            }
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    /// <summary>What the file is; the reader refuses anything but a regular file.</summary>
    internal IO.FileKind Kind { get; }

    /// <summary>Absolute path of the file.</summary>
    public string FullPath { get; }

    /// <summary>The location as the model names it (relative to the model's folder).</summary>
    public string Location { get; }

    /// <summary>File size in bytes when the model was opened.</summary>
    public long Length { get; }

    /// <summary>Maps the byte range of a tensor (no copy).</summary>
    public unsafe ReadOnlyMemory<byte> Map(long offset, long length, string tensorName)
    {
        if (length > int.MaxValue)
        {
            throw new OnnxSerializationException($"Tensor '{tensorName}' in '{FullPath}' is {length} bytes; tensors over 2 GiB cannot be viewed as one span (stream it with WriteTo).");
        }

        if (length == 0)
        {
            return ReadOnlyMemory<byte>.Empty;
        }

        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_view is null)
            {
                var stream = new FileStream(_handle, FileAccess.Read, 1);
                _map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: true);
                _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                byte* p = null;
                _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
                _base = p + _view.PointerOffset;
            }

            return new UnmanagedRange(_base + offset, (int)length).Memory;
        }
    }

    /// <summary>Streams a byte range to <paramref name="destination"/> through a pooled buffer.</summary>
    public void CopyTo(long offset, long length, Stream destination, string tensorName)
    {
        ArgumentNullException.ThrowIfNull(destination);
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Min(CopyChunk, Math.Max(length, 1)));
        try
        {
            long done = 0;
            while (done < length)
            {
                int want = (int)Math.Min(buffer.Length, length - done);
                int got = RandomAccess.Read(_handle, buffer.AsSpan(0, want), offset + done);
                if (got <= 0)
                {
                    throw new OnnxSerializationException($"External data file '{FullPath}' ended early while reading tensor '{tensorName}' (offset {offset}, length {length}).");
                }

                destination.Write(buffer, 0, got);
                done += got;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Reads the byte range at <paramref name="offset"/> into <paramref name="destination"/> with positioned reads
    /// (not through the memory map): the pages read stay in the page cache, not in this process.
    /// </summary>
    /// <exception cref="OnnxSerializationException">The file ends before the range does.</exception>
    public void Read(long offset, Span<byte> destination, string tensorName)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int got = RandomAccess.Read(_handle, destination[done..], offset + done);
            if (got <= 0)
            {
                throw new OnnxSerializationException($"External data file '{FullPath}' ended early while reading tensor '{tensorName}' (offset {offset}, length {destination.Length}).");
            }

            done += got;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            if (_view is not null)
            {
                _view.SafeMemoryMappedViewHandle.ReleasePointer();
                _view.Dispose();
            }

            _map?.Dispose();
            _handle.Dispose();
        }
    }

    /// <summary>Exposes mapped memory as <see cref="Memory{T}"/>; valid while the file is not disposed.</summary>
    private sealed unsafe class UnmanagedRange(byte* pointer, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
