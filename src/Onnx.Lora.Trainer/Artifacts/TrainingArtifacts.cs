using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Loss;

using Onnx.Lora.Trainer.Autodiff;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>How to build training artifacts.</summary>
public sealed record TrainingArtifactsOptions
{
    /// <summary>The loss appended to the model (default: causal LM cross-entropy).</summary>
    public ILossHead Loss { get; init; } = new CausalLmLoss();

    /// <summary>Model output the loss reads; default "logits", else the first output.</summary>
    public string? PredictionOutput { get; init; }

    /// <summary>Trainable tensors; default: the LoRA manifest's <see cref="LoraManifest.TrainableTensors"/>.</summary>
    public IReadOnlyList<string>? TrainableTensors { get; init; }

    /// <summary>Gradient checkpointing: each decoder layer's activations are recomputed in the backward pass (<see cref="ActivationRecomputation"/>).</summary>
    public bool RecomputeActivations { get; init; }

    /// <summary>
    /// Called with the finished training graph and its trainable tensor names while it is still in memory (the memory
    /// walk reads it here rather than parsing training.onnx again).
    /// </summary>
    public Action<Model, IReadOnlyList<string>>? InspectTrainingGraph { get; init; }

    /// <summary>Called with what gradient checkpointing recomputed (when <see cref="RecomputeActivations"/> is on).</summary>
    public Action<RecomputationResult>? Recomputed { get; init; }
}

/// <summary>A trainable tensor of the artifacts: name and dims.</summary>
/// <param name="Name">Initializer name (also the training model's input name).</param>
/// <param name="Dims">Dimensions.</param>
public sealed record TrainableTensor(string Name, long[] Dims)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Dims.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// The training artifacts of a model, in one folder: <c>training.onnx</c> (inputs: batch tensors + trainable tensors
/// with their initial values as defaults; outputs: loss, token_count, one <c>&lt;name&gt;_grad</c> per trainable
/// tensor), <c>eval.onnx</c> (loss and token_count, dropout off), <c>weights.data</c> (the frozen weights, which both
/// models reference) and <c>artifacts.json</c> describing them. Both models run in a plain ONNX Runtime InferenceSession.
/// </summary>
public sealed class TrainingArtifacts
{
    /// <summary>File name of the training model.</summary>
    public const string TrainingModelFile = "training.onnx";

    /// <summary>File name of the evaluation model.</summary>
    public const string EvalModelFile = "eval.onnx";

    /// <summary>File name of the frozen weights, shared by the training and the evaluation model.</summary>
    public const string WeightsDataFile = "weights.data";

    /// <summary>File name of the description.</summary>
    public const string DescriptionFile = "artifacts.json";

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    private TrainingArtifacts(string folder, ArtifactDescription description, float[][]? initialValues = null)
    {
        Folder = folder;
        Description = description;
        _initialValues = initialValues;
    }

    /// <summary>The artifacts folder.</summary>
    public string Folder { get; }

    /// <summary>Path of the training model.</summary>
    public string TrainingModelPath => Path.Combine(Folder, TrainingModelFile);

    /// <summary>Path of the evaluation model.</summary>
    public string EvalModelPath => Path.Combine(Folder, EvalModelFile);

    /// <summary>Trainable tensors, in the order of the gradient outputs.</summary>
    public IReadOnlyList<TrainableTensor> Trainable => Description.Trainable;

    /// <summary>Past inputs that stayed in the graph and must be fed empty tensors.</summary>
    public IReadOnlyList<string> EmptyPastInputs => Description.EmptyPastInputs;

    /// <summary>Extra scalar outputs of the evaluation model (metric sums such as correct predictions), in output order.</summary>
    public IReadOnlyList<string> EvalMetricOutputs => Description.MetricOutputs;

    internal ArtifactDescription Description { get; }

    // Initial values of the trainable tensors, in Trainable order, when this process built the artifacts (null when
    // opened with Load): the session then starts from them instead of parsing training.onnx again.
    private readonly float[][]? _initialValues;

    /// <summary>
    /// The initial value of trainable tensor <paramref name="index"/> when these artifacts were built in this process;
    /// null when they were opened from a folder (read it from <see cref="TrainingModelPath"/>).
    /// </summary>
    internal float[]? InitialValue(int index) => _initialValues?[index];

    /// <summary>Builds the artifacts of the model at <paramref name="modelPath"/> into <paramref name="outputFolder"/>.</summary>
    /// <exception cref="LoraException">The model has no LoRA manifest and no trainable tensors were given, a tensor is
    /// missing, or an op on a training path has no gradient rule.</exception>
    public static TrainingArtifacts Build(string modelPath, string outputFolder, TrainingArtifactsOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelPath);
        ArgumentException.ThrowIfNullOrEmpty(outputFolder);
        TrainingArtifacts artifacts;
        using (Model model = OnnxReader.Load(modelPath))
        {
            artifacts = BuildCore(model, modelPath, outputFolder, options ?? new TrainingArtifactsOptions());
        }

        ReleaseBuildMemory();
        return artifacts;
    }

    /// <summary>
    /// Builds the artifacts of the loaded <paramref name="model"/> (named <paramref name="source"/> in messages) into
    /// <paramref name="outputFolder"/>. The model is not changed: the training and the evaluation graph are built on
    /// copies of its graph that share its tensors, so the file is read once. Afterwards every initializer of
    /// <paramref name="model"/> whose bytes went into <see cref="WeightsDataFile"/> reads them from there
    /// (memory-mapped): a caller that keeps the model through training holds no second copy of the weights.
    /// </summary>
    /// <exception cref="LoraException">The model has no LoRA manifest and no trainable tensors were given, a tensor is
    /// missing, or an op on a training path has no gradient rule.</exception>
    public static TrainingArtifacts Build(Model model, string source, string outputFolder, TrainingArtifactsOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(source);
        ArgumentException.ThrowIfNullOrEmpty(outputFolder);
        TrainingArtifacts artifacts = BuildCore(model, source, outputFolder, options ?? new TrainingArtifactsOptions());
        ReleaseBuildMemory();
        return artifacts;
    }

    /// <summary>
    /// Returns the memory of the build to the operating system. Building holds the model's weights in managed memory
    /// (the whole model at 0.1–1 GiB, more while writing); training runs right after and its peak would sit on top of
    /// that garbage, because the GC neither collects nor decommits it before the next allocation pressure. An
    /// aggressive, compacting full collection (the large-object heap included) gives it back now.
    /// </summary>
    private static void ReleaseBuildMemory()
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
    }

    private static TrainingArtifacts BuildCore(Model model, string modelPath, string outputFolder, TrainingArtifactsOptions options)
    {
        Directory.CreateDirectory(outputFolder);

        // Everything is built in a hidden folder and moved into place only once both models are written, so a
        // failed build (an op without a gradient rule, a full disk) leaves the output folder as it was.
        AtomicFile.RemoveStaleTemporaryFolders(outputFolder, "artifacts");
        string staging = Path.Combine(outputFolder, AtomicFile.TemporaryFolderName("artifacts"));
        Directory.CreateDirectory(staging);
        try
        {
            (ArtifactDescription description, SavedModel saved, float[][] initial) = WriteTrainingModel(model, modelPath, options, staging);
            WriteEvalModel(model, modelPath, options, description.Trainable.Select(t => t.Name).ToArray(), saved, staging);
            AtomicFile.WriteAllText(Path.Combine(staging, DescriptionFile), JsonSerializer.Serialize(description, s_json));
            MoveIntoPlace(staging, outputFolder);
            saved.MovedTo(outputFolder).ReferenceWrittenData(model);
            return new TrainingArtifacts(Path.GetFullPath(outputFolder), description, initial);
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    /// <summary>Builds training.onnx from a copy of <paramref name="source"/> into <paramref name="folder"/>, with the frozen weights in <see cref="WeightsDataFile"/>.</summary>
    private static (ArtifactDescription Description, SavedModel Saved, float[][] Initial) WriteTrainingModel(Model source, string modelPath, TrainingArtifactsOptions options, string folder)
    {
        using Model training = source.Copy();
        IReadOnlyList<string> trainable = options.TrainableTensors
            ?? LoraManifest.Read(training)?.TrainableTensors().ToArray()
            ?? throw new LoraException($"Model '{modelPath}' has no LoRA manifest (metadata '{LoraManifest.MetadataKey}'); inject LoRA first or name the trainable tensors.");
        if (trainable.Count == 0)
        {
            throw new LoraException($"Model '{modelPath}' has no trainable tensors.");
        }

        var tensors = new List<TrainableTensor>();
        foreach (string name in trainable)
        {
            Value init = training.Graph.Initializers.TryGetValue(name, out Value? v) ? v
                : throw new GraphValidationException($"Trainable tensor '{name}' is not an initializer of '{modelPath}'.");
            if (init.Initializer!.DataType != DataType.Float)
            {
                throw new GraphValidationException($"Trainable tensor '{name}' of '{modelPath}' is {init.Initializer.DataType}; expected float32.");
            }

            tensors.Add(new TrainableTensor(name, [.. init.Initializer.Dims]));
        }

        float[][] initial = [.. trainable.Select(name => training.Graph.Initializers[name].Initializer!.ToArray<float>())];

        IReadOnlyList<string> emptyPast = Prepare(training, options, modelPath, out LossOutputs trainLoss, out _);
        BackwardResult backward = Trainer.Artifacts.TrainingGraph.MakeTraining(training, trainLoss.Loss, trainLoss.TokenCount, trainable, options.RecomputeActivations);
        if (backward.Recomputation is { } recomputed)
        {
            options.Recomputed?.Invoke(recomputed);
        }

        options.InspectTrainingGraph?.Invoke(training, trainable);
        SavedModel saved = OnnxWriter.Save(training, Path.Combine(folder, TrainingModelFile), new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = WeightsDataFile });
        var description = new ArtifactDescription
        {
            Trainable = tensors,
            EmptyPastInputs = [.. emptyPast],
            LabelInputs = [.. options.Loss.LabelInputs],
            MetricOutputs = options.Loss is IEvaluationMetricHead m ? [.. m.MetricOutputs] : [],
        };
        return (description, saved, initial);
    }

    /// <summary>Opens artifacts written by <see cref="Build(string, string, TrainingArtifactsOptions?)"/>.</summary>
    /// <exception cref="LoraException">The folder has no valid <c>artifacts.json</c>.</exception>
    public static TrainingArtifacts Load(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        string path = Path.Combine(folder, DescriptionFile);
        if (!File.Exists(path))
        {
            throw new LoraException($"'{folder}' holds no training artifacts ({DescriptionFile} is missing).");
        }

        try
        {
            ArtifactDescription description = JsonSerializer.Deserialize<ArtifactDescription>(File.ReadAllText(path), s_json)
                ?? throw new LoraException($"'{path}' is empty.");
            return new TrainingArtifacts(Path.GetFullPath(folder), description);
        }
        catch (JsonException e)
        {
            throw new LoraException($"'{path}' is not a valid artifacts description: {e.Message}", e);
        }
    }

    /// <summary>
    /// Writes eval.onnx beside training.onnx, referencing the same bytes of <see cref="WeightsDataFile"/>: the weights
    /// are on disk once, not once per model. Both graphs are copies of one source sharing its tensor objects, so a
    /// tensor the training save wrote is matched by identity (no name guess, no byte comparison).
    /// </summary>
    private static void WriteEvalModel(Model source, string modelPath, TrainingArtifactsOptions options, IReadOnlyList<string> trainable, SavedModel training, string folder)
    {
        using Model eval = source.Copy();
        Prepare(eval, options, modelPath, out LossOutputs evalLoss, out Value prediction);
        DisableDropout(eval);
        IReadOnlyList<(string, Value)>? metrics = options.Loss is IEvaluationMetricHead head
            ? head.MetricOutputs.Zip(head.AttachMetrics(new GraphBuilder(eval), prediction)).ToArray()
            : null;
        Trainer.Artifacts.TrainingGraph.MakeEvaluation(eval, evalLoss.Loss, evalLoss.TokenCount, trainable, metrics);
        training.ReferenceWrittenData(eval);

        // Tensors the training model does not hold (none for the loss heads we build) stay inline; Keep writes every
        // external tensor as a reference to the shared data file.
        OnnxWriter.Save(eval, Path.Combine(folder, EvalModelFile), new SaveOptions { ExternalData = ExternalDataMode.Keep });
    }

    /// <summary>
    /// Moves the staged files into <paramref name="outputFolder"/>. The description goes last and the old one first:
    /// while files are being replaced the folder holds no artifacts.json, so <see cref="Load"/> never sees a mix.
    /// </summary>
    private static void MoveIntoPlace(string staging, string outputFolder)
    {
        File.Delete(Path.Combine(outputFolder, DescriptionFile));
        foreach (string file in new[] { WeightsDataFile, TrainingModelFile, EvalModelFile, DescriptionFile })
        {
            File.Move(Path.Combine(staging, file), Path.Combine(outputFolder, file), overwrite: true);
        }
    }

    private static IReadOnlyList<string> Prepare(Model model, TrainingArtifactsOptions options, string modelPath, out LossOutputs loss, out Value prediction)
    {
        OpsetUpgrade.Apply(model);
        IReadOnlyList<string> emptyPast = KvCacheRemoval.Apply(model);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        prediction = (options.PredictionOutput is { } name
                ? graph.Outputs.FirstOrDefault(o => o.Name == name)
                : graph.Outputs.FirstOrDefault(o => o.Name == "logits") ?? graph.Outputs.FirstOrDefault())
            ?? throw new GraphValidationException($"Model '{modelPath}' has no output '{options.PredictionOutput ?? "logits"}'.");
        loss = options.Loss.Attach(new GraphBuilder(model), prediction);
        return emptyPast;
    }

    /// <summary>Evaluation runs dropout in inference mode: the training_mode input is dropped.</summary>
    private static void DisableDropout(Model model)
    {
        foreach (Node node in model.Graph.Nodes.Where(n => n.Is("Dropout")))
        {
            if (node.Inputs.Count > 2)
            {
                node.ReplaceInput(2, null);
            }
        }
    }

}

/// <summary>The JSON description of an artifacts folder.</summary>
internal sealed record ArtifactDescription
{
    public int Version { get; init; } = 1;

    public required IReadOnlyList<TrainableTensor> Trainable { get; init; }

    public IReadOnlyList<string> EmptyPastInputs { get; init; } = [];

    public IReadOnlyList<string> LabelInputs { get; init; } = [];

    public IReadOnlyList<string> MetricOutputs { get; init; } = [];
}
