using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Onnx.Lora.Ir.IO;

/// <summary>
/// A whole file as a <see cref="ReadOnlySequence{T}"/> whose 1 MiB segments are read only when a parser reaches them,
/// into a ring of a few reused buffers: the parser knows the total length (so protobuf allocates a large bytes field
/// once, at its final size, instead of gathering it in 4 KB chunks and copying them: 2× its size), while the file's
/// bytes never sit in this process beyond a few MiB (a memory map would count every page it touches).
/// </summary>
/// <remarks>
/// NOTE: correct for forward-only parsers (protobuf's): a segment whose buffer was reused is read again if asked for.
/// </remarks>
internal static class FileSequence
{
    private const int SegmentBytes = 1 << 20;
    private const int RingSize = 4;

    /// <summary>The first <paramref name="length"/> bytes of the file behind <paramref name="handle"/>; valid while the handle is open.</summary>
    public static ReadOnlySequence<byte> Create(SafeFileHandle handle, long length)
    {
        ArgumentNullException.ThrowIfNull(handle);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, int.MaxValue);
        if (length == 0)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        var ring = new Ring(handle);
        Segment first = new(ring, 0, 0, (int)Math.Min(SegmentBytes, length)), last = first;
        for (long offset = SegmentBytes; offset < length; offset += SegmentBytes)
        {
            last = last.Append((int)Math.Min(SegmentBytes, length - offset));
        }

        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    private sealed class Ring(SafeFileHandle handle)
    {
        private readonly byte[][] _buffers = [.. Enumerable.Range(0, RingSize).Select(_ => GC.AllocateUninitializedArray<byte>(SegmentBytes, pinned: true))];
        private readonly int[] _owner = [.. Enumerable.Repeat(-1, RingSize)];

        public Span<byte> Fill(int index, long offset, int length)
        {
            int slot = index % RingSize;
            Span<byte> span = _buffers[slot].AsSpan(0, length);
            if (_owner[slot] != index)
            {
                int done = 0;
                while (done < length)
                {
                    int got = RandomAccess.Read(handle, span[done..], offset + done);
                    if (got <= 0)
                    {
                        throw new IOException($"The file ended at byte {offset + done} while being parsed (it changed while being read).");
                    }

                    done += got;
                }

                _owner[slot] = index;
            }

            return span;
        }
    }

    private sealed class Chunk(Ring ring, int index, long offset, int length) : MemoryManager<byte>
    {
        // NOTE: base.Memory would call GetSpan (reading the chunk) just to learn its length.
        public Memory<byte> LazyMemory => CreateMemory(length);

        public override Span<byte> GetSpan() => ring.Fill(index, offset, length);

        public override unsafe MemoryHandle Pin(int elementIndex = 0) =>
            new((byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(GetSpan())) + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        private readonly Ring _ring;
        private readonly int _index;

        public Segment(Ring ring, int index, long offset, int length)
        {
            _ring = ring;
            _index = index;
            Memory = new Chunk(ring, index, offset, length).LazyMemory;
            RunningIndex = offset;
        }

        public Segment Append(int length)
        {
            var next = new Segment(_ring, _index + 1, RunningIndex + Memory.Length, length);
            Next = next;
            return next;
        }
    }
}
