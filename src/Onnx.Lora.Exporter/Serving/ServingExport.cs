// The serving model for .onnx_adapter files: the base graph with an adapter SLOT per adapted module (A, B as graph
// inputs with a symbolic rank and r = 0 initializer defaults, scale folded into B, no scale Mul), plus one
// NAME.onnx_adapter per adapter, each validated against that model (names, dtypes, fixed dims). Adapters of
// different ranks share one serving model: each module's rank dimension is symbolic and its own
// (<module>.lora_rank, as the injector declares it), so an adapter may also give modules different ranks.
//   from a LoRA model: its branches are removed (the base graph comes back) and slots are added for its modules;
//   from a base model: slots are added for the union of the adapters' modules (or the given targets).
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Exporter.Serving;

/// <summary>An adapter to ship with the serving model.</summary>
/// <param name="Name">Adapter name: the file is NAME.onnx_adapter.</param>
/// <param name="Path">A LoRA model written by inject/train (its trained tensors), a PEFT folder, a .safetensors or an .onnx_adapter file.</param>
public sealed record ServingAdapter(string Name, string Path);

/// <summary>What to write.</summary>
public sealed record ServingExportOptions
{
    /// <summary>Folder for the serving model and the adapters (created if missing).</summary>
    public required string OutputFolder { get; init; }

    /// <summary>File name of the serving model.</summary>
    public string ModelFileName { get; init; } = "base-with-slots.onnx";

    /// <summary>The adapters. For a LoRA model input, empty means "its own trained adapter, named 'adapter'".</summary>
    public IReadOnlyList<ServingAdapter> Adapters { get; init; } = [];

    /// <summary>Module names to give slots (base model input only); default: every module some adapter adapts.</summary>
    public IReadOnlyList<string>? Targets { get; init; }
}

/// <summary>What was written.</summary>
/// <param name="ModelPath">The serving model.</param>
/// <param name="Manifest">Its manifest (slot names per module).</param>
/// <param name="AdapterPaths">The adapter files, by adapter name.</param>
public sealed record ServingExportReport(string ModelPath, LoraManifest Manifest, IReadOnlyDictionary<string, string> AdapterPaths);

/// <summary>Writes a serving model with adapter slots and its .onnx_adapter files.</summary>
public static class ServingExport
{
    /// <summary>Name of a LoRA model's own adapter when no adapter is given.</summary>
    public const string DefaultAdapterName = "adapter";

    /// <summary>
    /// Writes the serving model built from <paramref name="modelPath"/> (a LoRA model or a base) and every adapter.
    /// Everything is read and validated before the first file is written.
    /// </summary>
    /// <exception cref="AdapterMismatchException">An adapter does not fit, uses DoRA (not expressible by additive slots), or the LoRA model used PiSSA.</exception>
    /// <exception cref="AdapterFormatException">An adapter file is malformed.</exception>
    public static ServingExportReport Export(string modelPath, ServingExportOptions options)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        ArgumentNullException.ThrowIfNull(options);
        using Model model = OnnxReader.Load(modelPath);
        LoraManifest? trained = LoraManifest.Read(model);
        var adapters = new List<(string Name, LoraWeights Weights, string Source)>();
        IReadOnlyList<string> modules;
        if (trained is not null)
        {
            if (trained.Pissa)
            {
                throw new AdapterMismatchException($"Model '{modelPath}' was initialized with PiSSA: its base weights are residuals, so a serving model without the adapter would be wrong. Merge it instead.");
            }

            LoraWeights? own = trained.Placement == LoraPlacement.Initializers ? LoraWeights.FromModel(model, trained, modelPath) : null;
            if (options.Adapters.Count == 0)
            {
                adapters.Add((DefaultAdapterName, own ?? throw new AdapterMismatchException($"Model '{modelPath}' has empty adapter slots; give the adapters to ship."), modelPath));
            }

            modules = trained.Modules.Select(m => m.Module).ToList();
            LoraBranchRemover.Remove(model.Graph, trained, modelPath);
            model.MetadataProps.RemoveAll(p => p.Key == LoraManifest.MetadataKey);
        }
        else
        {
            if (options.Adapters.Count == 0)
            {
                throw new AdapterMismatchException($"Model '{modelPath}' has no LoRA adapters; give the adapters to ship with it.");
            }

            modules = TargetDiscovery.FindAll(model).Select(t => t.Module).ToList();
        }

        foreach (ServingAdapter a in options.Adapters)
        {
            if (a.Name.Length == 0 || a.Name.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || adapters.Any(x => x.Name == a.Name))
            {
                throw new AdapterFormatException($"Adapter name '{a.Name}' is empty, not a valid file name, or given twice.");
            }

            adapters.Add((a.Name, ModuleMatcher.Match(LoadAny(a.Path), modules, modelPath, a.Path), a.Path));
        }

        IReadOnlyList<string> targets = options.Targets
            ?? (trained is not null ? modules : adapters.SelectMany(a => a.Weights.Modules.Select(m => m.Module)).Distinct(StringComparer.Ordinal).ToList());
        LoraManifest serving = LoraInjector.Inject(model, new LoraOptions { Targets = targets, Placement = LoraPlacement.AdapterSlots, Rank = 1, Alpha = 1 });

        var files = new List<(string Path, AdapterFile File)>();
        foreach ((string name, LoraWeights weights, string source) in adapters)
        {
            AdapterFile file = weights.ToAdapterFile(serving);
            AdapterValidation.ValidateAgainstModel(file, model, source);
            files.Add((Path.Combine(options.OutputFolder, name + OnnxAdapterFormat.Extension), file));
        }

        Directory.CreateDirectory(options.OutputFolder);
        string modelOut = Path.Combine(options.OutputFolder, options.ModelFileName);
        OnnxWriter.Save(model, modelOut, model.DataFiles.Count > 0
            ? new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = options.ModelFileName + ".data" }
            : new SaveOptions { ExternalData = ExternalDataMode.Inline });
        foreach ((string path, AdapterFile file) in files)
        {
            OnnxAdapterFormat.Write(file, path);
        }

        var paths = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < adapters.Count; i++)
        {
            paths[adapters[i].Name] = files[i].Path;
        }

        return new ServingExportReport(modelOut, serving, paths);
    }

    /// <summary>Adapter weights from a LoRA model (its trained tensors) or any adapter file.</summary>
    private static LoraWeights LoadAny(string path)
    {
        if (File.Exists(path) && path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            using Model lora = OnnxReader.Load(path);
            LoraManifest manifest = LoraManifest.Read(lora) ?? throw new AdapterMismatchException($"Model '{path}' has no LoRA manifest; it holds no adapter.");
            return LoraWeights.FromModel(lora, manifest, path);
        }

        return AdapterLoader.Load(path);
    }
}
