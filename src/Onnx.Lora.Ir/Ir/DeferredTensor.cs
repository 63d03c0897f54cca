using System.Buffers;

namespace Onnx.Lora.Ir;

/// <summary>
/// A tensor whose bytes are computed only when they are written (e.g. a merged weight): saving a model streams each
/// such tensor through memory one at a time, so peak memory is the largest tensor, not the model.
/// </summary>
public sealed class DeferredTensor : Tensor
{
    private readonly Func<byte[]>? _produce;
    private readonly Action<Span<byte>>? _fill;

    /// <summary>Creates a tensor whose bytes <paramref name="produce"/> computes on demand (each call recomputes).</summary>
    public DeferredTensor(string name, DataType dataType, IEnumerable<long> dims, Func<byte[]> produce) : base(name, dataType, dims)
    {
        ArgumentNullException.ThrowIfNull(produce);
        _produce = produce;
    }

    /// <summary>
    /// Creates a tensor whose bytes <paramref name="fill"/> computes on demand into a destination of exactly
    /// <see cref="ByteLength"/> bytes (each call recomputes). Written to a stream, the destination is a pooled buffer
    /// reused tensor by tensor, so writing a model of such tensors allocates nothing per tensor.
    /// </summary>
    public DeferredTensor(string name, DataType dataType, IEnumerable<long> dims, Action<Span<byte>> fill) : base(name, dataType, dims)
    {
        ArgumentNullException.ThrowIfNull(fill);
        _fill = fill;
    }

    /// <inheritdoc />
    public override long ByteLength => DataType.ByteCount(ElementCount);

    /// <inheritdoc />
    /// <exception cref="GraphValidationException">The producer returned a different number of bytes than the shape needs.</exception>
    public override ReadOnlyMemory<byte> GetBytes()
    {
        if (_fill is not null)
        {
            // NOTE: a fresh array, never the pooled buffer: callers keep what GetBytes returns (inline saving wraps it).
            byte[] owned = GC.AllocateUninitializedArray<byte>(checked((int)ByteLength));
            _fill(owned);
            return owned;
        }

        byte[] bytes = _produce!();
        if (bytes.Length != ByteLength)
        {
            throw new GraphValidationException($"Deferred tensor '{Name}' produced {bytes.Length} bytes; its shape needs {ByteLength}.");
        }

        return bytes;
    }

    /// <inheritdoc />
    public override void WriteTo(Stream destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (_fill is null)
        {
            base.WriteTo(destination);
            return;
        }

        if (ByteLength > Array.MaxLength)
        {
            throw new GraphValidationException($"Deferred tensor '{Name}' is {ByteLength} bytes; tensors over 2 GiB cannot be computed in one buffer.");
        }

        int length = (int)ByteLength;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            _fill(buffer.AsSpan(0, length));
            destination.Write(buffer, 0, length);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <inheritdoc />
    public override void CopyTo(Span<byte> destination)
    {
        CheckDestination(destination);
        if (_fill is null)
        {
            base.CopyTo(destination);
            return;
        }

        _fill(destination);
    }
}
