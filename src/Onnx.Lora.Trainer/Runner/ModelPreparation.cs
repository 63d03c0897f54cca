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
public sealed record ModelLimits(string Name, int VocabSize, int? MaxPositions, ModelShape Shape);

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
        return new ModelLimits(Path.GetFileName(source), VocabSize(model, source), ModelMetadataKeys.ReadMaxPositions(model), TrainingMemoryEstimate.ShapeOf(model));
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
        maxPositions ??= ModelMetadataKeys.ReadMaxPositions(model);
        LoraManifest? manifest = LoraManifest.Read(model);
        string loraPath = modelPath;
        if (manifest is null)
        {
            LoraOptions lora = ToLoraOptions(options);
            lora.Validate();
            manifest = LoraInjector.Inject(model, lora);
            loraPath = Path.Combine(artifactsDir, TrainingRunner.LoraModelFile);
            observer.OnMessage($"injected LoRA r={options.LoraRank} alpha={options.LoraAlpha} into {manifest.Modules.Count} modules ({options.LoraTargetRegex ?? string.Join(",", options.LoraTargets)}) → {loraPath}");
            OnnxWriter.Save(model, loraPath);
        }
        else
        {
            observer.OnMessage(SetsLoraOptions(options)
                ? $"{name} already carries LoRA ({manifest.Modules.Count} modules); the lora_* options are ignored"
                : $"{name} already carries LoRA ({manifest.Modules.Count} modules)");
        }

        if (manifest.Placement != LoraPlacement.Initializers)
        {
            throw new LoraException($"Model '{source}' holds empty adapter slots (a serving model); train a model injected with trainable initializers.");
        }

        int vocab = VocabSize(model, source);
        observer.OnMessage($"building training graphs in {artifactsDir}");
        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraPath, artifactsDir);
        return new PreparedModel(name, loraPath, manifest, artifacts, vocab, maxPositions);
    }

    // Only worth a warning when the user asked for something the injected model will not get.
    private static bool SetsLoraOptions(TrainOptions options)
    {
        var d = new TrainOptions();
        return options.LoraRank != d.LoraRank || options.LoraAlpha != d.LoraAlpha || !options.LoraTargets.SequenceEqual(d.LoraTargets)
            || options.LoraTargetRegex != d.LoraTargetRegex || !options.LoraExclude.SequenceEqual(d.LoraExclude) || options.LoraLayers != d.LoraLayers
            || !options.LoraRankPattern.SequenceEqual(d.LoraRankPattern) || !options.LoraAlphaPattern.SequenceEqual(d.LoraAlphaPattern)
            || options.LoraInit != d.LoraInit || options.UseRsLora != d.UseRsLora || options.UseDora != d.UseDora;
    }

    /// <summary>
    /// The LoRA options that <paramref name="options"/> describe: the one place the <c>lora_*</c> keys map onto the
    /// rewriter's options, the same object <c>inject</c> builds from its flags (so both select and scale alike).
    /// </summary>
    /// <exception cref="LoraOptionsException">A layer list or pattern is malformed.</exception>
    public static LoraOptions ToLoraOptions(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new LoraOptions
        {
            Rank = options.LoraRank,
            Alpha = options.LoraAlpha,
            Dropout = options.LoraDropout,
            UseRsLora = options.UseRsLora,
            UseDora = options.UseDora,
            Init = options.LoraInit,
            Targets = options.LoraTargetRegex is null ? options.LoraTargets : [],
            TargetRegex = options.LoraTargetRegex,
            Exclude = options.LoraExclude,
            Layers = options.LoraLayers is null ? null : LoraOptions.ParseLayers(options.LoraLayers),
            RankPattern = options.LoraRankPattern.Select(PatternOverride.Parse).ToArray(),
            AlphaPattern = options.LoraAlphaPattern.Select(PatternOverride.Parse).ToArray(),
            Seed = options.Seed,
            TrainingGraph = options.LoraDropout > 0,
            BaseModelNameOrPath = string.IsNullOrEmpty(options.Model) ? null : BaseModelReference.For(options.Model),
        };
    }

    // The logits' last axis is the vocabulary; when it is symbolic, the embedding Gather's table has one row per token.
    private static int VocabSize(Model model, string source) => ModelVocabulary.TryRead(model)
        ?? throw new LoraException($"Model '{source}': cannot tell the vocabulary size (no static logits axis and no embedding Gather).");
}
