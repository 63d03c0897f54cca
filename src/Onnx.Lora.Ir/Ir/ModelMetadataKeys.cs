using System.Globalization;

namespace Onnx.Lora.Ir;

/// <summary>Model metadata (ONNX metadata_props) that builders write and the trainer and generator read.</summary>
public static class ModelMetadataKeys
{
    /// <summary>Longest sequence the model's position tables hold (Hugging Face's config name for it).</summary>
    public const string MaxPositions = "max_position_embeddings";

    /// <summary>The model's position limit from <see cref="MaxPositions"/>, or null when absent or not a positive integer.</summary>
    public static int? ReadMaxPositions(IEnumerable<KeyValuePair<string, string>> metadata)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        foreach (KeyValuePair<string, string> p in metadata)
        {
            if (p.Key == MaxPositions && int.TryParse(p.Value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0)
            {
                return n;
            }
        }

        return null;
    }

    /// <summary>The position limit of <paramref name="model"/>, or null.</summary>
    public static int? ReadMaxPositions(Model model) => ReadMaxPositions((model ?? throw new ArgumentNullException(nameof(model))).MetadataProps);
}
