using System.Buffers.Binary;
using System.Text;

namespace Onnx.Lora.Formats;

/// <summary>
/// A bounds-checked reader of FlatBuffers tables. Hand-written (there is no flatc here) and stricter than generated
/// code: every offset is checked against the buffer, so a corrupt file gives an error naming the field instead of
/// reading out of range.
/// </summary>
internal readonly struct FlatBufferView
{
    private readonly ReadOnlyMemory<byte> _buffer;
    private readonly string _source;

    public FlatBufferView(ReadOnlyMemory<byte> buffer, string source)
    {
        _buffer = buffer;
        _source = source;
    }

    public int Length => _buffer.Length;

    /// <summary>The 4-character file identifier at bytes 4..8.</summary>
    public string Identifier => _buffer.Length >= 8 ? Encoding.ASCII.GetString(_buffer.Span.Slice(4, 4)) : string.Empty;

    /// <summary>Position of the root table.</summary>
    public int RootTable(string what) => Table(0, what);

    /// <summary>Follows the uoffset stored at <paramref name="position"/> to a table and checks its vtable.</summary>
    public int Table(int position, string what)
    {
        int table = Follow(position, what);
        int vtable = VTable(table, what);
        ushort vtableSize = ReadUInt16(vtable, what);
        if (vtableSize < 4 || vtableSize % 2 != 0)
        {
            throw Error($"{what} has a malformed vtable (size {vtableSize})");
        }

        Check(vtable, vtableSize, what);
        return table;
    }

    /// <summary>Absolute position of field <paramref name="index"/> of <paramref name="table"/>, or -1 when absent.</summary>
    public int Field(int table, int index, string what)
    {
        int vtable = VTable(table, what);
        ushort vtableSize = ReadUInt16(vtable, what);
        int slot = 4 + (2 * index);
        if (slot + 2 > vtableSize)
        {
            return -1;
        }

        ushort offset = ReadUInt16(vtable + slot, what);
        return offset == 0 ? -1 : table + offset;
    }

    public int ReadIntField(int table, int index, int defaultValue, string what)
    {
        int at = Field(table, index, what);
        return at < 0 ? defaultValue : ReadInt32(at, what);
    }

    /// <summary>Start and element count of the vector referenced by field <paramref name="index"/>; (-1, 0) when absent.</summary>
    public (int Start, int Count) Vector(int table, int index, int elementSize, string what)
    {
        int at = Field(table, index, what);
        if (at < 0)
        {
            return (-1, 0);
        }

        int vector = Follow(at, what);
        uint count = ReadUInt32(vector, what);
        if (count > (uint)(_buffer.Length / Math.Max(elementSize, 1)))
        {
            throw Error($"{what} declares {count} elements, more than the file holds");
        }

        Check(vector + 4, checked((int)count * elementSize), what);
        return (vector + 4, (int)count);
    }

    public string? String(int table, int index, string what)
    {
        (int start, int count) = Vector(table, index, 1, what);
        return start < 0 ? null : Encoding.UTF8.GetString(_buffer.Span.Slice(start, count));
    }

    public ReadOnlyMemory<byte> Bytes(int start, int count) => _buffer.Slice(start, count);

    public long ReadInt64(int position, string what)
    {
        Check(position, 8, what);
        return BinaryPrimitives.ReadInt64LittleEndian(_buffer.Span[position..]);
    }

    public int ReadInt32(int position, string what)
    {
        Check(position, 4, what);
        return BinaryPrimitives.ReadInt32LittleEndian(_buffer.Span[position..]);
    }

    /// <summary>The position a uoffset at <paramref name="position"/> points to (computed in 64 bits: hostile offsets must not wrap).</summary>
    private int Follow(int position, string what)
    {
        long target = position + (long)ReadUInt32(position, what);
        Check(target, 0, what);
        return (int)target;
    }

    /// <summary>The vtable position of <paramref name="table"/> (a signed soffset back from the table).</summary>
    private int VTable(int table, string what)
    {
        long vtable = table - (long)ReadInt32(table, what);
        Check(vtable, 2, what);
        return (int)vtable;
    }

    private uint ReadUInt32(int position, string what)
    {
        Check(position, 4, what);
        return BinaryPrimitives.ReadUInt32LittleEndian(_buffer.Span[position..]);
    }

    private ushort ReadUInt16(int position, string what)
    {
        Check(position, 2, what);
        return BinaryPrimitives.ReadUInt16LittleEndian(_buffer.Span[position..]);
    }

    private void Check(long position, int count, string what)
    {
        if (position < 0 || count < 0 || position + count > _buffer.Length)
        {
            throw Error($"{what} points outside the file (bytes {position}..{(long)position + count} of {_buffer.Length}): truncated or corrupt");
        }
    }

    private AdapterFormatException Error(string message) => new($"Adapter file '{_source}': {message}.");
}
