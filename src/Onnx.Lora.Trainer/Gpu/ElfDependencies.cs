using System.Buffers.Binary;
using System.Text;

namespace Onnx.Lora.Trainer.Gpu;

/// <summary>
/// Reads the DT_NEEDED entries (the shared libraries a library asks the loader for) of a 64-bit little-endian ELF file
/// without loading it: dlopen reports only the first missing dependency, and a user fixing LD_LIBRARY_PATH wants the
/// whole list. Reads the headers, the dynamic section and the string table only (a few KB of a 290 MB library).
/// </summary>
internal static class ElfDependencies
{
    private const uint PtLoad = 1;
    private const uint PtDynamic = 2;
    private const long DtNeeded = 1;
    private const long DtStrtab = 5;
    private const long DtStrsz = 10;

    /// <summary>The libraries <paramref name="path"/> needs, in file order; null when it is not a 64-bit little-endian ELF file.</summary>
    public static IReadOnlyList<string>? Read(string path)
    {
        using FileStream file = File.OpenRead(path);
        Span<byte> header = stackalloc byte[64];
        if (file.Read(header) < 64 || header[0] != 0x7F || header[1] != (byte)'E' || header[2] != (byte)'L' || header[3] != (byte)'F'
            || header[4] != 2 /* 64-bit */ || header[5] != 1 /* little-endian */)
        {
            return null;
        }

        long programHeaders = (long)BinaryPrimitives.ReadUInt64LittleEndian(header[0x20..]);
        int entrySize = BinaryPrimitives.ReadUInt16LittleEndian(header[0x36..]);
        int count = BinaryPrimitives.ReadUInt16LittleEndian(header[0x38..]);
        if (entrySize < 56 || count == 0)
        {
            return null;
        }

        byte[] table = ReadAt(file, programHeaders, (long)entrySize * count);
        var loads = new List<(ulong VirtualAddress, ulong Offset, ulong Size)>();
        (long Offset, long Size)? dynamic = null;
        for (int i = 0; i < count; i++)
        {
            ReadOnlySpan<byte> entry = table.AsSpan(i * entrySize, entrySize);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(entry);
            ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(entry[0x08..]);
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(entry[0x10..]);
            ulong fileSize = BinaryPrimitives.ReadUInt64LittleEndian(entry[0x20..]);
            if (type == PtLoad)
            {
                loads.Add((address, offset, fileSize));
            }
            else if (type == PtDynamic)
            {
                dynamic = ((long)offset, (long)fileSize);
            }
        }

        if (dynamic is not { } d || d.Size <= 0 || d.Size > 1 << 20)
        {
            return null;
        }

        byte[] entries = ReadAt(file, d.Offset, d.Size);
        var needed = new List<long>();
        ulong stringTable = 0;
        long stringSize = 0;
        for (int at = 0; at + 16 <= entries.Length; at += 16)
        {
            long tag = BinaryPrimitives.ReadInt64LittleEndian(entries.AsSpan(at));
            ulong value = BinaryPrimitives.ReadUInt64LittleEndian(entries.AsSpan(at + 8));
            if (tag == 0)
            {
                break;
            }

            switch (tag)
            {
                case DtNeeded: needed.Add((long)value); break;
                case DtStrtab: stringTable = value; break;
                case DtStrsz: stringSize = (long)value; break;
            }
        }

        // DT_STRTAB holds a virtual address: map it to a file offset through the loadable segment that contains it.
        var segment = loads.FirstOrDefault(l => stringTable >= l.VirtualAddress && stringTable < l.VirtualAddress + l.Size);
        if (segment.Size == 0 || stringSize <= 0 || stringSize > 16 << 20)
        {
            return null;
        }

        byte[] strings = ReadAt(file, (long)(stringTable - segment.VirtualAddress + segment.Offset), stringSize);
        return needed.Where(o => o >= 0 && o < strings.Length)
            .Select(o => Encoding.UTF8.GetString(strings, (int)o, Array.IndexOf(strings, (byte)0, (int)o) is var end and >= 0 ? end - (int)o : strings.Length - (int)o))
            .ToArray();
    }

    private static byte[] ReadAt(FileStream file, long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > file.Length)
        {
            throw new InvalidDataException($"'{file.Name}' is truncated: bytes {offset}..{offset + length} lie past its end ({file.Length}).");
        }

        var buffer = new byte[length];
        file.Position = offset;
        file.ReadExactly(buffer);
        return buffer;
    }
}
