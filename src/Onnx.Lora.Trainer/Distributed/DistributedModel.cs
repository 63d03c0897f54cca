using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Trainer.Distributed;

/// <summary>
/// The model side of a run on a rank other than 0: rank 0 converts, injects and builds the training graphs
/// (<see cref="ModelPreparation.Prepare"/>); the other ranks open what it wrote instead of writing the same files
/// concurrently. Multi-machine runs therefore need <c>output_dir</c> on a shared file system.
/// </summary>
public static class DistributedModel
{
    /// <summary>
    /// What rank 0 sends the other ranks once it has prepared the model: the LoRA model's path and its manifest, so
    /// that they need not parse that model again (each rank has already read the source model once).
    /// </summary>
    public static string Describe(PreparedModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return model.LoraModelPath + "\n" + model.Manifest.ToJson();
    }

    /// <summary>Opens the prepared model from rank 0's <see cref="Describe"/>: its manifest and the artifacts in <paramref name="artifactsDir"/>.</summary>
    /// <param name="options">The run's options.</param>
    /// <param name="description">What rank 0 sent (<see cref="Describe"/>).</param>
    /// <param name="artifactsDir">The run's artifacts folder.</param>
    /// <param name="limits">Vocabulary and position limits read from the model before preparation.</param>
    /// <exception cref="LoraException">The files are missing (e.g. output_dir is not shared between machines) or unreadable.</exception>
    public static PreparedModel Load(TrainOptions options, string description, string artifactsDir, ModelLimits limits)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(limits);
        int newline = description.IndexOf('\n', StringComparison.Ordinal);
        string loraModelPath = newline < 0 ? description : description[..newline];
        if (!File.Exists(loraModelPath))
        {
            throw new LoraException($"Rank 0 prepared the LoRA model '{loraModelPath}', which this rank cannot see: put output_dir on a file system shared by all machines.");
        }

        LoraManifest manifest = newline < 0 ? throw new LoraException($"Rank 0 sent no LoRA manifest with '{loraModelPath}'.") : LoraManifest.FromJson(description[(newline + 1)..]);
        return new PreparedModel(Path.GetFileName(options.Model), loraModelPath, manifest, TrainingArtifacts.Load(artifactsDir), limits.VocabSize, limits.MaxPositions);
    }
}
