namespace Onnx.Lora.Bench.Fuzz;

/// <summary>
/// Structure-aware protobuf mutations: the message is parsed into a field tree (without a schema: a length-delimited
/// payload that parses cleanly as fields is treated as a sub-message), one field is changed (varint set to a boundary
/// value, length prefix made to lie, string replaced, field deleted or duplicated) and the tree is written back with
/// consistent lengths everywhere else — so the edit reaches the reader's checks instead of failing the first parse.
/// </summary>
public static class ProtobufMutator
{
    /// <summary>Mutates <paramref name="data"/>; <paramref name="strings"/> are replacement candidates for string fields.</summary>
    public static byte[] Mutate(byte[] data, Random rng, IReadOnlyList<string> strings)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(rng);
        ArgumentNullException.ThrowIfNull(strings);
        List<ProtoField>? root = Parse(data, 0, data.Length, depth: 0);
        if (root is null || root.Count == 0)
        {
            return ByteMutator.Mutate(data, rng);
        }

        var all = new List<(List<ProtoField> Owner, int Index)>();
        Collect(root, all);
        (List<ProtoField> owner, int index) = all[rng.Next(all.Count)];
        ProtoField field = owner[index];
        switch (rng.Next(6))
        {
            case 0:
                owner.RemoveAt(index);
                break;
            case 1:
                owner.Insert(rng.Next(owner.Count + 1), field.Clone());
                break;
            case 2 when field.WireType == 0:
                field.Varint = (ulong)ByteMutator.InterestingInteger(rng, (long)field.Varint);
                break;
            case 3 when field.WireType == 2:
                // The length prefix lies; the payload is unchanged.
                field.LengthOverride = (ulong)ByteMutator.InterestingInteger(rng, field.PayloadLength);
                break;
            case 4 when field.WireType == 2 && strings.Count > 0:
                field.Payload = System.Text.Encoding.UTF8.GetBytes(strings[rng.Next(strings.Count)]);
                field.Children = null;
                break;
            default:
                if (field.WireType == 2 && field.Children is null && field.Payload.Length > 0)
                {
                    field.Payload = ByteMutator.Mutate(field.Payload, rng);
                }
                else
                {
                    field.Varint ^= 1UL << rng.Next(64);
                }

                break;
        }

        using var output = new MemoryStream(data.Length + 16);
        Write(root, output);
        return output.ToArray();
    }

    private static void Collect(List<ProtoField> fields, List<(List<ProtoField>, int)> all)
    {
        for (int i = 0; i < fields.Count; i++)
        {
            all.Add((fields, i));
            if (fields[i].Children is { } children)
            {
                Collect(children, all);
            }
        }
    }

    private static List<ProtoField>? Parse(byte[] data, int start, int end, int depth)
    {
        var fields = new List<ProtoField>();
        int pos = start;
        while (pos < end)
        {
            if (!TryReadVarint(data, ref pos, end, out ulong tag) || tag >> 3 is 0 or > (1 << 29))
            {
                return null;
            }

            var field = new ProtoField { Number = tag >> 3, WireType = (int)(tag & 7) };
            switch (field.WireType)
            {
                case 0:
                    if (!TryReadVarint(data, ref pos, end, out ulong v))
                    {
                        return null;
                    }

                    field.Varint = v;
                    break;
                case 1 or 5:
                    int size = field.WireType == 1 ? 8 : 4;
                    if (end - pos < size)
                    {
                        return null;
                    }

                    field.Payload = data.AsSpan(pos, size).ToArray();
                    pos += size;
                    break;
                case 2:
                    if (!TryReadVarint(data, ref pos, end, out ulong length) || length > (ulong)(end - pos))
                    {
                        return null;
                    }

                    field.Payload = data.AsSpan(pos, (int)length).ToArray();
                    field.Children = depth < 64 && length > 0 ? Parse(data, pos, pos + (int)length, depth + 1) : null;
                    pos += (int)length;
                    break;
                default:
                    return null;
            }

            fields.Add(field);
        }

        return fields;
    }

    private static bool TryReadVarint(byte[] data, ref int pos, int end, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 64 && pos < end; shift += 7)
        {
            byte b = data[pos++];
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                return true;
            }
        }

        return false;
    }

    private static void Write(List<ProtoField> fields, MemoryStream output)
    {
        foreach (ProtoField f in fields)
        {
            WriteVarint(output, (f.Number << 3) | (uint)f.WireType);
            switch (f.WireType)
            {
                case 0:
                    WriteVarint(output, f.Varint);
                    break;
                case 2:
                    byte[] payload = f.Payload;
                    if (f.Children is { } children)
                    {
                        using var inner = new MemoryStream();
                        Write(children, inner);
                        payload = inner.ToArray();
                    }

                    WriteVarint(output, f.LengthOverride ?? (ulong)payload.Length);
                    output.Write(payload);
                    break;
                default:
                    output.Write(f.Payload);
                    break;
            }
        }
    }

    private static void WriteVarint(MemoryStream output, ulong value)
    {
        while (value >= 0x80)
        {
            output.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }

        output.WriteByte((byte)value);
    }

    private sealed class ProtoField
    {
        public ulong Number { get; init; }

        public int WireType { get; init; }

        public ulong Varint { get; set; }

        public byte[] Payload { get; set; } = [];

        public List<ProtoField>? Children { get; set; }

        public ulong? LengthOverride { get; set; }

        public long PayloadLength => Payload.Length;

        public ProtoField Clone() => new()
        {
            Number = Number,
            WireType = WireType,
            Varint = Varint,
            Payload = Payload,
            Children = Children?.Select(c => c.Clone()).ToList(),
            LengthOverride = LengthOverride,
        };
    }
}
