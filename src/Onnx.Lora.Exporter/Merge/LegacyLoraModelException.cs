using Onnx.Lora.Ir;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>
/// A LoRA model injected by an onnx-lora older than the tags (<see cref="LoraTags"/>): its manifest lists modules but no
/// node says which branch it belongs to, so its LoRA nodes cannot be told from the base graph. The message says how to
/// merge it anyway: export its adapter and merge that into the base model, which needs no tags.
/// </summary>
public class LegacyLoraModelException : OnnxSerializationException
{
    /// <summary>Creates the exception.</summary>
    public LegacyLoraModelException() { }

    /// <summary>Creates the exception with a message.</summary>
    public LegacyLoraModelException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public LegacyLoraModelException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The error for the untagged LoRA model <paramref name="source"/>.</summary>
    internal static LegacyLoraModelException For(string source) => new(
        $"Model '{source}' was injected by an older onnx-lora: its LoRA nodes carry no '{LoraTags.ModuleKey}' tag, so they cannot be told from the base graph. " +
        $"Export its adapter and merge that into the base model instead: onnx-lora export-adapter {source} --peft ADAPTER_DIR, then onnx-lora merge BASE.onnx --adapter ADAPTER_DIR -o MERGED.onnx (or inject the base again with this version).");
}
