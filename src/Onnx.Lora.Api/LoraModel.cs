using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;

namespace Onnx.Lora;

/// <summary>
/// An ONNX model held in memory: a base model, or a LoRA model written by <see cref="Inject"/>, by <c>onnx-lora
/// inject</c> or by training. Each operation runs the code of the matching <c>onnx-lora</c> verb on this one loaded
/// model (the file is read once, by <see cref="Load"/>); <see cref="Save"/> writes it atomically.
/// </summary>
/// <remarks>Not thread-safe: one operation at a time. Dispose it to release memory-mapped weight files.</remarks>
/// <example>
/// <code>
/// using LoraModel model = LoraModel.Load("base.onnx");
/// model.Inject(new LoraOptions { Rank = 16, Alpha = 32, Targets = ["q_proj", "v_proj"] });
/// model.Save("base.lora.onnx");
/// </code>
/// </example>
public sealed class LoraModel : IDisposable
{
    private readonly Model _model;

    private LoraModel(Model model, string source)
    {
        _model = model;
        Source = source;
    }

    /// <summary>The file this model was loaded from (named in error messages).</summary>
    public string Source { get; }

    /// <summary>True when the model carries LoRA branches (it has the rewriter's manifest).</summary>
    public bool HasAdapters => LoraManifest.Read(_model) is not null;

    /// <summary>The modules that carry a LoRA branch, in graph order; empty for a base model.</summary>
    public IReadOnlyList<AdaptedModule> AdaptedModules =>
        LoraManifest.Read(_model)?.Modules.Select(m => new AdaptedModule(m.Module, m.InFeatures, m.OutFeatures, m.Rank, m.Alpha)).ToList() ?? [];

    /// <summary>
    /// Loads an ONNX model (external data included), or converts a llama2.c checkpoint (<c>.bin</c>) as
    /// <c>onnx-lora convert-llama2c</c> does.
    /// </summary>
    /// <param name="path">An <c>.onnx</c> file or a llama2.c <c>.bin</c> checkpoint.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="ToolchainException">The file is not a readable model (<see cref="OnnxSerializationException"/>) or checkpoint.</exception>
    public static LoraModel Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Model '{path}' does not exist.", path);
        }

        Model model = path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) ? Llama2cConverter.Convert(path) : OnnxReader.Load(path);
        return new LoraModel(model, path);
    }

    /// <summary>
    /// The linear layers LoRA can target, under their PEFT module names, output head included and marked (what
    /// <c>onnx-lora inspect</c> lists).
    /// </summary>
    public IReadOnlyList<LinearLayer> FindTargets() => TargetDiscovery.Find(_model)
        .Select(t => new LinearLayer(t.Module, t.OpKind.ToString(), t.InFeatures, t.OutFeatures, t.Quantized, t.IsOutputHead)).ToList();

    /// <summary>
    /// Inserts LoRA branches into the layers <paramref name="options"/> selects, as <c>onnx-lora inject</c> does:
    /// PEFT's target matching (names, suffixes, regexes, <c>all-linear</c>), layers, exclusions, rank and alpha
    /// patterns, rsLoRA, DoRA and the initializations. B starts at zero, so the model's outputs do not change.
    /// </summary>
    /// <param name="options">The LoRA configuration; validated here, never modified.</param>
    /// <returns>The adapted modules and PEFT's trainable-parameter count.</returns>
    /// <exception cref="LoraOptionsException">The options are invalid or select no layer.</exception>
    /// <exception cref="InvalidOperationException">The model already has LoRA branches.</exception>
    public InjectionResult Inject(LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (HasAdapters)
        {
            throw new InvalidOperationException($"Model '{Source}' already has LoRA branches; inject into a base model.");
        }

        // As inject: PEFT's base_model_name_or_path defaults to this model's folder (with config.json) or path.
        options = options with { BaseModelNameOrPath = BaseModelReference.For(Source, options.BaseModelNameOrPath) };
        options.Validate();
        long baseParameters = ModelSummary.Create(_model).ParameterCount;
        IReadOnlyList<SelectedTarget> plan = LoraInjector.Plan(_model, options);
        long trainable = LoraInjector.TrainableParameters(plan, options.UseDora);
        LoraInjector.Inject(_model, options);
        IReadOnlyList<AdaptedModule> modules = plan
            .Select(s => new AdaptedModule(s.Target.Module, s.Target.InFeatures, s.Target.OutFeatures, s.Rank, s.Alpha)).ToList();
        return new InjectionResult(modules, trainable, baseParameters + trainable);
    }

    /// <summary>The adapter held in this LoRA model's own A/B tensors (after training: the trained ones).</summary>
    /// <exception cref="InvalidOperationException">The model has no LoRA branches.</exception>
    /// <exception cref="AdapterMismatchException">The LoRA tensors are missing or malformed.</exception>
    public LoraAdapter GetAdapter()
    {
        LoraManifest manifest = RequireManifest();
        return new LoraAdapter(LoraWeights.FromModel(_model, manifest, Source), manifest, Source);
    }

    /// <summary>
    /// Folds an adapter into the base weights (<c>W' = W + s·A·B</c>) and removes every LoRA node, as
    /// <c>onnx-lora merge</c> does: afterwards this is the plain base graph with updated weights, at zero inference
    /// overhead. A LoRA model merges its own tensors, or <paramref name="adapter"/> instead; a base model needs
    /// <paramref name="adapter"/>, matched to its layers by module name. Merged weights are computed when saved.
    /// </summary>
    /// <param name="adapter">The adapter to merge; null for a LoRA model's own tensors.</param>
    /// <param name="options">int4 (MatMulNBits) handling and Constant-node weights; defaults as the CLI's.</param>
    /// <returns>What was merged and removed.</returns>
    /// <exception cref="InvalidOperationException">A base model without <paramref name="adapter"/>.</exception>
    /// <exception cref="AdapterMismatchException">The adapter does not fit the model.</exception>
    public MergeReport Merge(LoraAdapter? adapter = null, MergeOptions? options = null)
    {
        LoraManifest? manifest = LoraManifest.Read(_model);
        if (manifest is null)
        {
            return adapter is null
                ? throw new InvalidOperationException($"Model '{Source}' has no LoRA adapters; give the adapter to merge.")
                : BaseModelMerge.MergeInto(_model, adapter.Weights, Source, adapter.Source, options);
        }

        LoraWeights weights = adapter is null ? LoraWeights.FromModel(_model, manifest, Source)
            : ModuleMatcher.Match(adapter.Weights, manifest.Modules.Select(m => m.Module).ToList(), Source, adapter.Source);
        return LoraMerger.MergeInto(_model, manifest, weights, Source, options);
    }

    /// <summary>
    /// Writes the model to <paramref name="path"/> atomically (a temporary file renamed into place), keeping large
    /// weights in external data when the model had them.
    /// </summary>
    /// <param name="path">The <c>.onnx</c> file to write; never the file the model was loaded from.</param>
    /// <param name="cancellationToken">Stops a long save between tensors; nothing is left behind.</param>
    /// <exception cref="OutputConflictException">The path is the model's own source.</exception>
    /// <exception cref="OutputWriteException">The file cannot be written.</exception>
    public void Save(string path, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Path.GetFullPath(path) == Path.GetFullPath(Source))
        {
            // Weights may still be memory-mapped from the source; overwriting it would corrupt the save itself.
            throw new OutputConflictException($"Refusing to overwrite '{Source}', which this model was loaded from; choose another path.");
        }

        OnnxWriter.Save(_model, path, new SaveOptions { CancellationToken = cancellationToken });
    }

    /// <inheritdoc />
    public void Dispose() => _model.Dispose();

    private LoraManifest RequireManifest() => LoraManifest.Read(_model)
        ?? throw new InvalidOperationException($"Model '{Source}' has no LoRA branches; inject or train one first.");
}
