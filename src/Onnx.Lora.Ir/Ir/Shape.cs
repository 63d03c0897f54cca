using System.Collections.ObjectModel;

namespace Onnx.Lora.Ir;

/// <summary>One dimension of a shape: a fixed size, a symbolic name, or unknown.</summary>
public readonly record struct Dim
{
    /// <summary>Creates a fixed dimension.</summary>
    public Dim(long value) => Value = value;

    /// <summary>Creates a symbolic dimension (e.g. "batch").</summary>
    public Dim(string param) => Param = param;

    /// <summary>The fixed size, when known.</summary>
    public long? Value { get; init; }

    /// <summary>The symbolic name, when the size is symbolic.</summary>
    public string? Param { get; init; }

    /// <summary>Denotation from the model, kept for round trips.</summary>
    public string? Denotation { get; init; }

    /// <summary>True when this dimension has a fixed size.</summary>
    public bool IsFixed => Value.HasValue;

    /// <inheritdoc />
    public override string ToString() => Value?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? Param ?? "?";

    /// <summary>Converts a fixed size.</summary>
    public static implicit operator Dim(long value) => new(value);

    /// <summary>Converts a symbolic name.</summary>
    public static implicit operator Dim(string param) => new(param);
}

/// <summary>A tensor shape: a rank and one <see cref="Dim"/> per axis.</summary>
public sealed class Shape : ReadOnlyCollection<Dim>
{
    /// <summary>Creates a shape.</summary>
    public Shape(IList<Dim> dims) : base(dims.ToArray())
    {
    }

    /// <summary>Creates a shape from its dimensions.</summary>
    public static Shape Of(params Dim[] dims) => new(dims);

    /// <summary>True when every dimension is fixed.</summary>
    public bool IsStatic => this.All(d => d.IsFixed);

    /// <summary>Fixed sizes of a static shape.</summary>
    /// <exception cref="InvalidOperationException">A dimension is not fixed.</exception>
    public long[] ToArrayOfSizes() => this.Select(d => d.Value ?? throw new InvalidOperationException($"Shape {this} is not static.")).ToArray();

    /// <inheritdoc />
    public override string ToString() => "[" + string.Join(",", this) + "]";
}

/// <summary>The type of a value: tensor element type and shape, or an opaque non-tensor type kept for round trips.</summary>
public sealed record ValueType
{
    /// <summary>A tensor type.</summary>
    public static ValueType Tensor(DataType elementType, Shape? shape = null) => new() { ElementType = elementType, Shape = shape };

    /// <summary>Element type of a tensor (Undefined for non-tensor types).</summary>
    public DataType ElementType { get; init; }

    /// <summary>Shape of a tensor, null when the rank is unknown.</summary>
    public Shape? Shape { get; init; }

    /// <summary>Denotation of the type, kept for round trips.</summary>
    public string? Denotation { get; init; }

    /// <summary>A serialized TypeProto for sequence/map/optional/sparse types the IR does not model.</summary>
    public ReadOnlyMemory<byte> Opaque { get; init; }

    /// <summary>True for a dense tensor type.</summary>
    public bool IsTensor => Opaque.IsEmpty;
}
