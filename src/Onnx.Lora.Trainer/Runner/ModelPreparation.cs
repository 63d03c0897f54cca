using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Injection;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Config;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>The model side of a run, ready to train.</summary>
/// <param name="Name">The model's file name (for messages and PEFT's base_model_name_or_path).</param>
/// <param name="LoraModelPath">The LoRA model the artifacts were built from.</param>
/// <param name="Manifest">Its LoRA manifest.</param>
/// <param name="Artifacts">Training and evaluation graphs.</param>
/// <param name="VocabSize">Rows of the token embedding (size of the logits' last axis).</param>
/// <param name="MaxPositions">Longest sequence the model supports, when known.</param>
public sealed record PreparedModel(string Name, string LoraModelPath, LoraManifest Manifest, TrainingArtifacts Artifacts, int VocabSize, int? MaxPositions);

/// <summary>What the data checks need to know about a model, read without converting or injecting anything.</summary>
/// <param name="Name">The model's file name.</param>
/// <param name="VocabSize">Rows of the token embedding.</param>
/// <param name="MaxPositions">Longest sequence the model supports, when known.</param>
/// <param name="Shape">The sizes the training memory estimate needs, read in the same pass.</param>
public sealed record ModelLimits(string Name, int VocabSize, int? MaxPositions, ModelShape Shape)
{
    /// <summary>Classes of a classifier's head: the fixed last axis of logits [batch, classes]; null for a language model.</summary>
    public int? ClassCount { get; init; }
}

/// <summary>
/// Turns <c>model</c> into training artifacts: a llama2.c <c>.bin</c> is converted first; a model without a LoRA
/// manifest gets LoRA injected from the run's LoRA options; an injected model is used as it is.
/// </summary>
public static class ModelPreparation
{
    /// <summary>
    /// Reads vocabulary size and position limit of <c>model</c> cheaply (a llama2.c header, or the ONNX graph with
    /// its weights left on disk), so the data can be validated before the expensive preparation.
    /// </summary>
    /// <exception cref="LoraException">The model cannot be read.</exception>
    public static ModelLimits ReadLimits(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string source = options.Model;
        if (!File.Exists(source))
        {
            throw new LoraException($"Model '{source}' does not exist.");
        }

        if (source.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            Llama2cHeader header = Llama2cCheckpoint.Open(source).Header;
            return new ModelLimits(Path.GetFileName(source), header.Vocab, header.SeqLen, TrainingMemoryEstimate.ShapeOf(header));
        }

        using Model model = OnnxReader.Load(source);
        using Model? embedding = EmbeddingChain.AttachIfNeeded(model, source);
        return new ModelLimits(Path.GetFileName(source), VocabSize(model, source), ModelMetadataKeys.ReadMaxPositions(model), TrainingMemoryEstimate.ShapeOf(model))
        {
            ClassCount = ClassCount(model),
        };
    }

    /// <summary>Prepares the model of <paramref name="options"/> into <paramref name="artifactsDir"/>.</summary>
    /// <exception cref="LoraException">The model cannot be read, converted or injected, or has no usable logits.</exception>
    public static PreparedModel Prepare(TrainOptions options, string artifactsDir, ITrainingObserver observer)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(observer);
        Directory.CreateDirectory(artifactsDir);
        string source = options.Model;
        if (!File.Exists(source))
        {
            throw new LoraException($"Model '{source}' does not exist.");
        }

        string name = Path.GetFileName(source);
        string modelPath = source;
        int? maxPositions = null;
        if (source.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            maxPositions = Llama2cCheckpoint.Open(source).Header.SeqLen;

            modelPath = Path.Combine(artifactsDir, Path.GetFileNameWithoutExtension(source) + ".onnx");
            observer.OnMessage($"converting llama2.c checkpoint {source} → {modelPath}");
            Llama2cConverter.ConvertToFile(source, modelPath);
        }

        using Model model = OnnxReader.Load(modelPath);
        using Model? embedding = EmbeddingChain.AttachIfNeeded(model, modelPath, observer.OnMessage);
        maxPositions ??= ModelMetadataKeys.ReadMaxPositions(model);
        LoraManifest? manifest = LoraManifest.Read(model);
        string loraPath = modelPath;
        if (manifest is null)
        {
            LoraOptions lora = ToLoraOptions(options);
            lora.Validate();
            manifest = LoraInjector.Inject(model, lora);
            loraPath = Path.Combine(artifactsDir, TrainingRunner.LoraModelFile);
            observer.OnMessage($"injected LoRA r={lora.Rank} alpha={lora.Alpha} into {manifest.Modules.Count} modules ({lora.TargetRegex ?? string.Join(",", lora.Targets)}) → {loraPath}");
            OnnxWriter.Save(model, loraPath);
        }
        else
        {
            observer.OnMessage(options.Lora is not null
                ? $"{name} already carries LoRA ({manifest.Modules.Count} modules); the lora_* options are ignored"
                : $"{name} already carries LoRA ({manifest.Modules.Count} modules)");
            if (embedding is not null)
            {
                // The artifacts are built from a file: the chained graph must be one.
                loraPath = Path.Combine(artifactsDir, TrainingRunner.LoraModelFile);
                OnnxWriter.Save(model, loraPath);
            }
        }

        if (manifest.Placement != LoraPlacement.Initializers)
        {
            throw new LoraException($"Model '{source}' holds empty adapter slots (a serving model); train a model injected with trainable initializers.");
        }

        int vocab = VocabSize(model, source);
        observer.OnMessage($"building training graphs in {artifactsDir}");
        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraPath, artifactsDir, new TrainingArtifactsOptions { Loss = Tasks.TrainingTasks.LossHead(options.Task), RecomputeActivations = options.GradientCheckpointing });
        return new PreparedModel(name, loraPath, manifest, artifacts, vocab, maxPositions);
    }

    /// <summary>
    /// The inject options of <paramref name="options"/>: its <see cref="TrainOptions.LoraOrDefault"/> configuration (the
    /// type <c>inject</c> builds from its flags, so both select and scale alike) placed as a trainable graph.
    /// </summary>
    public static LoraOptions ToLoraOptions(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        LoraConfig lora = options.LoraOrDefault;
        // A regex replaces the target list (PEFT: target_modules is either).
        return new LoraOptions(lora with
        {
            Targets = lora.TargetRegex is null ? lora.Targets : [],
            BaseModelNameOrPath = string.IsNullOrEmpty(options.Model) ? null : BaseModelReference.For(options.Model),
        })
        {
            Seed = options.Seed,
            TrainingGraph = lora.Dropout > 0,
        };
    }

    // The logits' last axis is the vocabulary; when it is symbolic, the embedding Gather's table has one row per token.
    private static int VocabSize(Model model, string source) => ModelVocabulary.TryRead(model)
        ?? throw new LoraException($"Model '{source}': cannot tell the vocabulary size (no static logits axis and no embedding Gather).");

    /// <summary>The fixed class count of logits [batch, classes], or null when the model has no such output.</summary>
    private static int? ClassCount(Model model) =>
        model.Graph.Outputs.FirstOrDefault(o => o.Name == "logits") is { Shape: { Count: 2 } shape } && shape[1].Value is long n and > 0 and <= int.MaxValue ? (int)n : null;
}
