using System.Buffers;
using System.Runtime.InteropServices;

namespace Onnx.Lora.Ir;

/// <summary>
/// Constant tensor data: an element type, dims and raw little-endian bytes, held in memory or in an external
/// data file that is only read when the bytes are asked for.
/// </summary>
public abstract class Tensor
{
    private protected Tensor(string name, DataType dataType, IEnumerable<long> dims)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(dims);
        Name = name;
        DataType = dataType;
        Dims = dims.ToArray();
        foreach (long d in Dims)
        {
            if (d < 0)
            {
                throw new GraphValidationException($"Tensor '{name}' has a negative dimension in [{string.Join(",", Dims)}].");
            }
        }
    }

    /// <summary>Tensor name (the initializer name).</summary>
    public string Name { get; set; }

    /// <summary>Element type.</summary>
    public DataType DataType { get; }

    /// <summary>Dimensions.</summary>
    public IReadOnlyList<long> Dims { get; }

    /// <summary>Documentation string.</summary>
    public string? DocString { get; set; }

    /// <summary>Metadata properties, kept in order.</summary>
    public List<KeyValuePair<string, string>> MetadataProps { get; } = [];

    /// <summary>Unknown protobuf fields, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    /// <summary>Number of elements.</summary>
    public long ElementCount => Dims.Aggregate(1L, (a, d) => checked(a * d));

    /// <summary>Bytes of raw data.</summary>
    public abstract long ByteLength { get; }

    /// <summary>True when the bytes live in an external data file.</summary>
    public virtual bool IsExternal => false;

    /// <summary>The raw little-endian bytes. For an external tensor this maps the file (no copy, read on touch).</summary>
    public abstract ReadOnlyMemory<byte> GetBytes();

    /// <summary>Writes the raw bytes to <paramref name="destination"/>, reading external data in chunks.</summary>
    public virtual void WriteTo(Stream destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        destination.Write(GetBytes().Span);
    }

    /// <summary>
    /// Copies the raw bytes into <paramref name="destination"/> (exactly <see cref="ByteLength"/> bytes). External
    /// tensors read the file through buffered reads instead of the memory map, so no file pages stay in the process.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="destination"/> is not <see cref="ByteLength"/> bytes long.</exception>
    public virtual void CopyTo(Span<byte> destination)
    {
        CheckDestination(destination);
        GetBytes().Span.CopyTo(destination);
    }

    /// <summary>Throws unless <paramref name="destination"/> holds exactly the tensor's bytes.</summary>
    protected void CheckDestination(Span<byte> destination)
    {
        if (destination.Length != ByteLength)
        {
            throw new ArgumentException($"Tensor '{Name}' is {ByteLength} bytes; the destination holds {destination.Length}.", nameof(destination));
        }
    }

    /// <summary>The data as a span of <typeparamref name="T"/> (no copy).</summary>
    /// <exception cref="GraphValidationException">The element type does not have the size of <typeparamref name="T"/>.</exception>
    public ReadOnlySpan<T> AsSpan<T>() where T : unmanaged
    {
        int bits = DataType.BitWidth();
        if (bits != Marshal.SizeOf<T>() * 8 && !(bits < 8 && typeof(T) == typeof(byte)))
        {
            throw new GraphValidationException($"Tensor '{Name}' is {DataType}; it cannot be read as {typeof(T).Name}.");
        }

        return MemoryMarshal.Cast<byte, T>(GetBytes().Span);
    }

    /// <summary>A copy of the data as an array of <typeparamref name="T"/>.</summary>
    public T[] ToArray<T>() where T : unmanaged => AsSpan<T>().ToArray();

    /// <summary>The values converted to float32 (float, float16, bfloat16, double, int8/uint8, int4/uint4, int32/int64).</summary>
    public float[] ToFloat32()
    {
        var result = new float[ElementCount];
        TensorConvert.ToFloat32(GetBytes().Span, DataType, result);
        return result;
    }

    /// <inheritdoc />
    public override string ToString() => $"{Name}: {DataType.ShortName()}[{string.Join(",", Dims)}]";
}

/// <summary>A tensor whose bytes are in memory.</summary>
public sealed class InMemoryTensor : Tensor
{
    private readonly ReadOnlyMemory<byte> _bytes;

    /// <summary>Creates a tensor over raw little-endian bytes.</summary>
    /// <exception cref="GraphValidationException">The byte count does not match dims × element size.</exception>
    public InMemoryTensor(string name, DataType dataType, IEnumerable<long> dims, ReadOnlyMemory<byte> bytes)
        : base(name, dataType, dims)
    {
        long expected = dataType.ByteCount(ElementCount);
        if (bytes.Length != expected)
        {
            throw new GraphValidationException($"Tensor '{name}' ({dataType.ShortName()}[{string.Join(",", Dims)}]) has {bytes.Length} bytes of data; expected {expected}.");
        }

        _bytes = bytes;
    }

    /// <summary>Creates a float32 tensor.</summary>
    public static InMemoryTensor FromFloats(string name, IEnumerable<long> dims, ReadOnlySpan<float> values) =>
        new(name, DataType.Float, dims, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>Creates a tensor from values of an unmanaged element type.</summary>
    public static InMemoryTensor From<T>(string name, DataType dataType, IEnumerable<long> dims, ReadOnlySpan<T> values) where T : unmanaged =>
        new(name, dataType, dims, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>Creates an int64 tensor.</summary>
    public static InMemoryTensor FromInt64s(string name, IEnumerable<long> dims, ReadOnlySpan<long> values) =>
        new(name, DataType.Int64, dims, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>A 1-D int64 tensor.</summary>
    public static InMemoryTensor Int64Vector(string name, params long[] values) => FromInt64s(name, [values.Length], values);

    /// <summary>A scalar of type float.</summary>
    public static InMemoryTensor Scalar(string name, float value) => FromFloats(name, [], [value]);

    /// <inheritdoc />
    public override long ByteLength => _bytes.Length;

    /// <inheritdoc />
    public override ReadOnlyMemory<byte> GetBytes() => _bytes;
}

/// <summary>A string tensor (kept as UTF-8 byte strings).</summary>
public sealed class StringTensor : Tensor
{
    /// <summary>Creates a string tensor.</summary>
    public StringTensor(string name, IEnumerable<long> dims, IReadOnlyList<byte[]> strings) : base(name, DataType.String, dims)
    {
        ArgumentNullException.ThrowIfNull(strings);
        Strings = strings;
    }

    /// <summary>The strings.</summary>
    public IReadOnlyList<byte[]> Strings { get; }

    /// <inheritdoc />
    public override long ByteLength => Strings.Sum(s => (long)s.Length);

    /// <inheritdoc />
    public override ReadOnlyMemory<byte> GetBytes() =>
        throw new GraphValidationException($"Tensor '{Name}' holds strings; it has no raw bytes.");

    /// <inheritdoc />
    public override void WriteTo(Stream destination) =>
        throw new GraphValidationException($"Tensor '{Name}' holds strings; it cannot be written as external data.");
}

/// <summary>A tensor whose bytes are a range of an external data file, read lazily through a memory map.</summary>
public sealed class ExternalTensor : Tensor
{
    /// <summary>Creates a view of <paramref name="length"/> bytes at <paramref name="offset"/> of <paramref name="file"/>.</summary>
    public ExternalTensor(string name, DataType dataType, IEnumerable<long> dims, ExternalDataFile file, long offset, long length)
        : base(name, dataType, dims)
    {
        ArgumentNullException.ThrowIfNull(file);
        File = file;
        Offset = offset;
        Length = length;
    }

    /// <summary>The data file.</summary>
    public ExternalDataFile File { get; }

    /// <summary>Byte offset in the file.</summary>
    public long Offset { get; }

    /// <summary>Byte length in the file.</summary>
    public long Length { get; }

    /// <inheritdoc />
    public override long ByteLength => Length;

    /// <inheritdoc />
    public override bool IsExternal => true;

    /// <inheritdoc />
    public override ReadOnlyMemory<byte> GetBytes() => File.Map(Offset, Length, Name);

    /// <inheritdoc />
    public override void WriteTo(Stream destination) => File.CopyTo(Offset, Length, destination, Name);

    /// <inheritdoc />
    public override void CopyTo(Span<byte> destination)
    {
        CheckDestination(destination);
        File.Read(Offset, destination, Name);
    }
}
