using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;

namespace Onnx.Lora;

/// <summary>
/// A LoRA adapter (per module: A, B and its scale) apart from any model: read from a PEFT folder, a PEFT
/// <c>.safetensors</c> file or an <c>.onnx_adapter</c>, or taken from a trained model with
/// <see cref="LoraModel.GetAdapter"/>. Merge it with <see cref="LoraModel.Merge"/>, or write it for ONNX Runtime /
/// ORT GenAI (<see cref="SaveOnnxAdapter"/>) or PEFT (<see cref="SavePeft"/>) as <c>onnx-lora export-adapter</c> does.
/// </summary>
public sealed class LoraAdapter
{
    private readonly LoraManifest? _manifest;
    private readonly string? _baseModel;

    internal LoraAdapter(LoraWeights weights, LoraManifest? manifest, string source)
    {
        Weights = weights;
        _manifest = manifest;
        Source = source;
        // As export-adapter: what inject recorded, else the LoRA model's own folder or path.
        _baseModel = manifest is null ? null : manifest.Config?.BaseModelNameOrPath ?? BaseModelReference.For(source);
    }

    /// <summary>The file or folder the adapter came from (named in error messages).</summary>
    public string Source { get; }

    /// <summary>The adapted module names, e.g. <c>model.layers.0.self_attn.q_proj</c>.</summary>
    public IReadOnlyList<string> Modules => Weights.Modules.Select(m => m.Module).ToList();

    internal LoraWeights Weights { get; }

    /// <summary>Reads an adapter by module name, whichever format it is in (no model needed).</summary>
    /// <param name="path">A PEFT folder (adapter_model.safetensors + adapter_config.json), a PEFT <c>.safetensors</c> file, or an <c>.onnx_adapter</c>.</param>
    /// <exception cref="AdapterFormatException">The adapter is missing, malformed, or holds no LoRA tensors.</exception>
    public static LoraAdapter Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new LoraAdapter(AdapterLoader.Load(path), manifest: null, path);
    }

    /// <summary>
    /// Writes an <c>.onnx_adapter</c> for ONNX Runtime's and ORT GenAI's adapter API: A [in, r] and B [r, out] with the
    /// scale folded into B, named as the serving model's adapter inputs (<c>&lt;module&gt;.lora_A.weight</c>).
    /// </summary>
    /// <param name="path">The file to write (atomically).</param>
    /// <exception cref="AdapterMismatchException">A module uses DoRA, which an additive adapter cannot express.</exception>
    public void SaveOnnxAdapter(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        AdapterFile file = _manifest is null ? AdapterLoader.ToNamedAdapter(Weights) : Weights.ToAdapterFile(_manifest);
        OnnxAdapterFormat.Write(file, path);
    }

    /// <summary>
    /// Writes a PEFT adapter folder (<c>adapter_model.safetensors</c> + <c>adapter_config.json</c>) that PEFT's
    /// <c>PeftModel.from_pretrained</c> loads: torch layout, scale from the config as PEFT derives it.
    /// </summary>
    /// <param name="folder">The folder to write.</param>
    /// <param name="baseModelNameOrPath">PEFT's base_model_name_or_path (a Hugging Face id or folder); null keeps the recorded one (for an adapter of a model: what inject recorded, else the model's folder or path).</param>
    /// <exception cref="AdapterFormatException">The weights cannot be written.</exception>
    public void SavePeft(string folder, string? baseModelNameOrPath = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        PeftAdapter.Export(Weights, folder, _manifest?.ConfigOrDerived(), baseModelNameOrPath ?? _baseModel);
    }
}
