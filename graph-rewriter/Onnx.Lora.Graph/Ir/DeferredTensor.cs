namespace Onnx.Lora.Graph;

/// <summary>
/// A tensor whose bytes are computed only when they are written (e.g. a merged weight): saving a model streams each
/// such tensor through memory one at a time, so peak memory is the largest tensor, not the model.
/// </summary>
public sealed class DeferredTensor : Tensor
{
    private readonly Func<byte[]> _produce;

    /// <summary>Creates a tensor whose bytes <paramref name="produce"/> computes on demand (each call recomputes).</summary>
    public DeferredTensor(string name, DataType dataType, IEnumerable<long> dims, Func<byte[]> produce) : base(name, dataType, dims)
    {
        ArgumentNullException.ThrowIfNull(produce);
        _produce = produce;
    }

    /// <inheritdoc />
    public override long ByteLength => DataType.ByteCount(ElementCount);

    /// <inheritdoc />
    /// <exception cref="GraphValidationException">The producer returned a different number of bytes than the shape needs.</exception>
    public override ReadOnlyMemory<byte> GetBytes()
    {
        byte[] bytes = _produce();
        if (bytes.Length != ByteLength)
        {
            throw new GraphValidationException($"Deferred tensor '{Name}' produced {bytes.Length} bytes; its shape needs {ByteLength}.");
        }

        return bytes;
    }
}
