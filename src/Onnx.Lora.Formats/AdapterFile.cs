using Onnx.Lora.Ir;

namespace Onnx.Lora.Formats;

/// <summary>One named tensor of an adapter file.</summary>
/// <param name="Name">Tensor name; equals the serving model's input name.</param>
/// <param name="DataType">Element type (ONNX numbering).</param>
/// <param name="Dims">Shape.</param>
/// <param name="Data">Raw little-endian bytes.</param>
public sealed record AdapterParameter(string Name, DataType DataType, IReadOnlyList<long> Dims, ReadOnlyMemory<byte> Data)
{
    /// <summary>A float32 parameter.</summary>
    public static AdapterParameter FromFloats(string name, IReadOnlyList<long> dims, ReadOnlySpan<float> values) =>
        new(name, DataType.Float, dims, System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>The values converted to float32.</summary>
    public float[] ToFloat32()
    {
        var result = new float[Dims.Aggregate(1L, (a, d) => checked(a * d))];
        TensorConvert.ToFloat32(Data.Span, DataType, result);
        return result;
    }
}

/// <summary>Which FlatBuffers layout a file used.</summary>
public enum AdapterFileFormat
{
    /// <summary>ONNX Runtime's <c>.onnx_adapter</c> (identifier "TORT", format_version 1).</summary>
    OnnxAdapter,

    /// <summary>ORT GenAI's 2024 LoRA parameter files (identifier "GAIL"): a version and the parameters, no adapter/model versions.</summary>
    LegacyGenAi,
}

/// <summary>
/// The content of an <c>.onnx_adapter</c> file (schema onnxruntime/lora/adapter_format/adapter_schema.fbs):
/// table Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }.
/// </summary>
public sealed record AdapterFile
{
    /// <summary>The only format version ONNX Runtime accepts.</summary>
    public const int CurrentFormatVersion = 1;

    /// <summary>Format version (1).</summary>
    public int FormatVersion { get; init; } = CurrentFormatVersion;

    /// <summary>Free version number of the adapter.</summary>
    public int AdapterVersion { get; init; }

    /// <summary>Free version number of the model the adapter belongs to.</summary>
    public int ModelVersion { get; init; }

    /// <summary>The layout the file was read from (written files are always <see cref="AdapterFileFormat.OnnxAdapter"/>).</summary>
    public AdapterFileFormat SourceFormat { get; init; } = AdapterFileFormat.OnnxAdapter;

    /// <summary>The tensors.</summary>
    public required IReadOnlyList<AdapterParameter> Parameters { get; init; }

    /// <summary>The parameter named <paramref name="name"/>, or null.</summary>
    public AdapterParameter? Find(string name) => Parameters.FirstOrDefault(p => p.Name == name);
}
