using Google.Protobuf;
using Google.Protobuf.Reflection;

namespace Onnx.Lora.Ir.Serialization;

/// <summary>
/// Carries protobuf fields this schema does not know (written by a newer exporter) through the IR: they are
/// cut out as bytes on read and merged back on write.
/// </summary>
internal static class UnknownFields
{
    /// <summary>The serialized unknown fields of <paramref name="message"/> (empty when there are none).</summary>
    public static ReadOnlyMemory<byte> Extract<T>(T message) where T : IMessage<T>
    {
        // Cheap pre-check: when the known fields account for the whole size there is nothing unknown.
        T copy = message.Clone();
        foreach (FieldDescriptor field in copy.Descriptor.Fields.InDeclarationOrder())
        {
            field.Accessor.Clear(copy);
        }

        int size = copy.CalculateSize();
        return size == 0 ? ReadOnlyMemory<byte>.Empty : copy.ToByteArray();
    }

    /// <summary>Merges previously extracted unknown fields back into <paramref name="message"/>.</summary>
    public static void Restore<T>(T message, ReadOnlyMemory<byte> unknown) where T : IMessage<T>
    {
        if (!unknown.IsEmpty)
        {
            message.MergeFrom(unknown.Span);
        }
    }
}
