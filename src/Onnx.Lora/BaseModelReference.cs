namespace Onnx.Lora;

/// <summary>
/// What an adapter records as PEFT's base_model_name_or_path for a model file: the folder of an exported Hugging Face
/// model (it holds config.json, as Optimum and the GenAI model builder leave it), else the model file's full path.
/// </summary>
public static class BaseModelReference
{
    /// <summary>The reference for the model at <paramref name="modelPath"/>, or <paramref name="explicitName"/> when given (a hub id or folder).</summary>
    public static string For(string modelPath, string? explicitName = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        if (!string.IsNullOrWhiteSpace(explicitName))
        {
            return explicitName;
        }

        string full = Path.GetFullPath(modelPath);
        if (Directory.Exists(full))
        {
            return Path.TrimEndingDirectorySeparator(full); // An encoder-decoder export is named by its folder.
        }

        string? folder = Path.GetDirectoryName(full);
        return folder is not null && File.Exists(Path.Combine(folder, "config.json")) ? folder : full;
    }
}
