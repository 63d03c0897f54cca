using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Injection;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>The model side of a run, ready to train.</summary>
/// <param name="Name">The model's file name (for messages and PEFT's base_model_name_or_path).</param>
/// <param name="LoraModelPath">The LoRA model the artifacts were built from.</param>
/// <param name="Manifest">Its LoRA manifest.</param>
/// <param name="Artifacts">Training and evaluation graphs.</param>
/// <param name="VocabSize">Rows of the token embedding (size of the logits' last axis).</param>
/// <param name="MaxPositions">Longest sequence the model supports, when known.</param>
public sealed record PreparedModel(string Name, string LoraModelPath, LoraManifest Manifest, TrainingArtifacts Artifacts, int VocabSize, int? MaxPositions)
{
    /// <summary>The memory walk of the training graph, taken while the build held it (null when the artifacts were loaded).</summary>
    public GraphMemoryProfile? MemoryProfile { get; init; }

    /// <summary>
    /// The LoRA model in memory (owned by the run's <see cref="ModelSource"/>; its frozen weights read from the
    /// artifacts' data file), for writing the trained model without parsing the file again; null on ranks that
    /// opened what rank 0 prepared.
    /// </summary>
    public Model? LoraModel { get; init; }

    /// <summary>Whether the LoRA model came with external data (the trained model is then written the same way).</summary>
    public bool ExternalData { get; init; }
}

/// <summary>What the data checks need to know about a model, read without converting or injecting anything.</summary>
/// <param name="Name">The model's file name.</param>
/// <param name="VocabSize">Rows of the token embedding.</param>
/// <param name="MaxPositions">Longest sequence the model supports, when known.</param>
/// <param name="Shape">The sizes the training memory estimate needs, read in the same pass.</param>
public sealed record ModelLimits(string Name, int VocabSize, int? MaxPositions, ModelShape Shape)
{
    /// <summary>Classes of a classifier's head: the fixed last axis of logits [batch, classes]; null for a language model.</summary>
    public int? ClassCount { get; init; }

    /// <summary>The decoder start and pad ids of an encoder-decoder (teacher forcing); null for other models.</summary>
    public DecoderTokens? DecoderTokens { get; init; }
}

/// <summary>
/// Turns <c>model</c> into training artifacts: a llama2.c <c>.bin</c> is converted first; a model without a LoRA
/// manifest gets LoRA injected from the run's LoRA options; an injected model is used as it is.
/// </summary>
public static class ModelPreparation
{
    /// <summary>
    /// Reads the model of <paramref name="options"/> once, with its weights left on disk (or a llama2.c header), and
    /// its vocabulary size and position limit, so the data can be validated before the expensive preparation; the same
    /// loaded graph is then prepared by <see cref="Prepare"/>.
    /// </summary>
    /// <exception cref="LoraException">The model cannot be read.</exception>
    public static ModelSource Open(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string source = options.Model;
        if (options.Task == Tasks.TrainingTasks.Seq2SeqLm)
        {
            return OpenEncoderDecoder(source);
        }

        if (!File.Exists(source))
        {
            throw new LoraException($"Model '{source}' does not exist.");
        }

        if (source.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
        {
            Llama2cHeader header = Llama2cCheckpoint.Open(source).Header;
            return new ModelSource(source, null, new ModelLimits(Path.GetFileName(source), header.Vocab, header.SeqLen, TrainingMemoryEstimate.ShapeOf(header)));
        }

        Model model = OnnxReader.Load(source);
        Model? embedding = null;
        try
        {
            embedding = EmbeddingChain.AttachIfNeeded(model, source);
            var limits = new ModelLimits(Path.GetFileName(source), VocabSize(model, source), ModelMetadataKeys.ReadMaxPositions(model), TrainingMemoryEstimate.ShapeOf(model, TrainingMemoryEstimate.HeadsFromConfig(source)))
            {
                ClassCount = ClassCount(model),
            };
            return new ModelSource(source, model, limits)
            {
                ChainedPart = embedding,
                ChainedPartNote = embedding is null ? null : "takes inputs_embeds: its embedding model is chained in front (token ids → inputs_embeds)",
            };
        }
        catch
        {
            embedding?.Dispose();
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Prepares the model of <paramref name="source"/> into <paramref name="artifactsDir"/>, on the graph
    /// <see cref="Open"/> read (injected in place when it carries no LoRA yet): no second read of the file.
    /// </summary>
    /// <param name="options">The run's options.</param>
    /// <param name="source">The model <see cref="Open"/> read.</param>
    /// <param name="artifactsDir">Where the LoRA model and the training graphs go.</param>
    /// <param name="observer">Receives progress messages.</param>
    /// <param name="loss">The task's loss head (<see cref="Tasks.ITrainingTask.LossHead"/>).</param>
    /// <exception cref="LoraException">The model cannot be converted or injected, or has no usable logits.</exception>
    public static PreparedModel Prepare(TrainOptions options, ModelSource source, string artifactsDir, ITrainingObserver observer, ILossHead loss)
    {
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(observer);
        Directory.CreateDirectory(artifactsDir);
        string name = source.Limits.Name;
        string modelPath = source.Path;
        if (source.Model is null)
        {
            modelPath = Path.Combine(artifactsDir, Path.GetFileNameWithoutExtension(source.Path) + ".onnx");
            observer.OnMessage($"converting llama2.c checkpoint {source.Path} → {modelPath}");
            Llama2cConverter.ConvertToFile(source.Path, modelPath);
            source.Model = OnnxReader.Load(modelPath);
        }

        Model model = source.Model;
        if (source.ChainedPartNote is { } chained)
        {
            observer.OnMessage($"{name} {chained}");
        }

        bool external = model.DataFiles.Count > 0;
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
            if (source.ChainedPart is not null)
            {
                // Other ranks and a reload read the LoRA model from its file: the chained graph must be that file.
                loraPath = Path.Combine(artifactsDir, TrainingRunner.LoraModelFile);
                OnnxWriter.Save(model, loraPath);
            }
        }

        if (manifest.Placement != LoraPlacement.Initializers)
        {
            throw new LoraException($"Model '{source.Path}' holds empty adapter slots (a serving model); train a model injected with trainable initializers.");
        }

        observer.OnMessage($"building training graphs in {artifactsDir}");
        GraphMemoryProfile? memory = null;
        TrainingArtifacts artifacts = TrainingArtifacts.Build(model, loraPath, artifactsDir, new TrainingArtifactsOptions
        {
            Loss = loss,
            RecomputeActivations = options.GradientCheckpointing,
            Recomputed = r => observer.OnMessage(r.Layers > 0
                ? $"gradient checkpointing: {r.Layers} layers recompute their activations in the backward pass ({r.RecomputedValues} saved values, {r.RecomputedNodes} nodes copied)"
                : "gradient checkpointing: no layer of this graph could be set to recompute (the layer's backward reads no gradient from above that does not pass through the layer itself, e.g. a bias gradient reshaped to an in-layer value's shape); training runs as without it"),
            // The walk serves only the memory check, which --memory-limit none turns off.
            InspectTrainingGraph = TrainingGraphMemory.IsOff(options) ? null
                : (graph, trainable) => memory = TrainingGraphMemory.Analyze(graph, options.BatchSize, options.SeqLength, trainable),
        });
        // Open read the vocabulary and the position limit (from the graph, or the llama2.c header the conversion keeps).
        return new PreparedModel(name, loraPath, manifest, artifacts, source.Limits.VocabSize, source.Limits.MaxPositions) { LoraModel = model, ExternalData = external, MemoryProfile = memory };
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

    private static ModelSource OpenEncoderDecoder(string source)
    {
        EncoderDecoderChain.FindParts(source); // Names the missing part before the config is looked at.
        DecoderTokens tokens = EncoderDecoderChain.ReadDecoderTokens(source);
        (Model joined, Model encoder) = EncoderDecoderChain.Load(source);
        try
        {
            string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Directory.Exists(source) ? Path.GetFullPath(source) : Path.GetDirectoryName(Path.GetFullPath(source))!));
            var limits = new ModelLimits(name, VocabSize(joined, source), ModelMetadataKeys.ReadMaxPositions(joined), TrainingMemoryEstimate.ShapeOf(joined))
            {
                DecoderTokens = tokens,
            };
            return new ModelSource(source, joined, limits)
            {
                ChainedPart = encoder,
                ChainedPartNote = $"is an encoder-decoder: {EncoderDecoderChain.EncoderFile} is chained in front of {EncoderDecoderChain.DecoderFile} (one graph, one adapter; decoder start id {tokens.DecoderStart}, pad id {tokens.Pad})",
            };
        }
        catch
        {
            encoder.Dispose();
            joined.Dispose();
            throw;
        }
    }

    // The logits' last axis is the vocabulary; when it is symbolic, the embedding Gather's table has one row per token.
    private static int VocabSize(Model model, string source) => ModelVocabulary.TryRead(model)
        ?? throw new LoraException($"Model '{source}': cannot tell the vocabulary size (no static logits axis and no embedding Gather).");

    /// <summary>The fixed class count of logits [batch, classes], or null when the model has no such output.</summary>
    private static int? ClassCount(Model model) =>
        model.Graph.Outputs.FirstOrDefault(o => o.Name == "logits") is { Shape: { Count: 2 } shape } && shape[1].Value is long n and > 0 and <= int.MaxValue ? (int)n : null;
}
