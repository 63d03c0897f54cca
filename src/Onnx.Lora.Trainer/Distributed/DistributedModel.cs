using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
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
    /// <summary>Opens the prepared model: the LoRA model rank 0 used and the artifacts in <paramref name="artifactsDir"/>.</summary>
    /// <param name="options">The run's options.</param>
    /// <param name="loraModelPath">The LoRA model rank 0 prepared (sent by it).</param>
    /// <param name="artifactsDir">The run's artifacts folder.</param>
    /// <param name="limits">Vocabulary and position limits read from the model before preparation.</param>
    /// <exception cref="LoraException">The files are missing (e.g. output_dir is not shared between machines) or unreadable.</exception>
    public static PreparedModel Load(TrainOptions options, string loraModelPath, string artifactsDir, ModelLimits limits)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(limits);
        if (!File.Exists(loraModelPath))
        {
            throw new LoraException($"Rank 0 prepared the LoRA model '{loraModelPath}', which this rank cannot see: put output_dir on a file system shared by all machines.");
        }

        LoraManifest manifest;
        using (Model model = OnnxReader.Load(loraModelPath))
        {
            manifest = LoraManifest.Read(model) ?? throw new LoraException($"'{loraModelPath}' carries no LoRA manifest.");
        }

        return new PreparedModel(Path.GetFileName(options.Model), loraModelPath, manifest, TrainingArtifacts.Load(artifactsDir), limits.VocabSize, limits.MaxPositions);
    }
}
