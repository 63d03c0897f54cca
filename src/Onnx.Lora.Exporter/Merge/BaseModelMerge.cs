// Merging an adapter into a plain base model (no manifest): the base's linear layers are discovered and named as PEFT
// names modules (the rewriter's TargetDiscovery), the adapter's modules are matched to them by name, the rewriter
// adds empty adapter slots for exactly those modules (no weight bytes read), and the usual merge folds the adapter in
// and removes the slots again. Reusing inject → merge keeps one code path for names, layouts and branch shapes.
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Formats;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>Merges an adapter file (PEFT folder, .safetensors, .onnx_adapter) into a base model without a LoRA manifest.</summary>
public static class BaseModelMerge
{
    /// <summary>
    /// Merges <paramref name="adapterPath"/> into the base model at <paramref name="basePath"/> and writes
    /// <paramref name="outputPath"/> atomically (the base is never modified).
    /// </summary>
    /// <exception cref="AdapterMismatchException">An adapter module matches no linear layer of the base (the message lists the closest names), or shapes differ.</exception>
    /// <exception cref="AdapterFormatException">The adapter file is malformed.</exception>
    /// <exception cref="OutputConflictException">The output is the base model.</exception>
    public static MergeReport Merge(string basePath, string adapterPath, string outputPath, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(basePath);
        ArgumentNullException.ThrowIfNull(adapterPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        if (Path.GetFullPath(basePath) == Path.GetFullPath(outputPath))
        {
            throw new OutputConflictException($"Refusing to merge into '{basePath}' itself: the base is never modified in place.");
        }

        using Model model = OnnxReader.Load(basePath);
        return Merge(model, basePath, adapterPath, outputPath, options);
    }

    /// <summary>
    /// Merges <paramref name="adapterPath"/> into the loaded base <paramref name="model"/> (read from
    /// <paramref name="basePath"/>, which names it in messages) and writes <paramref name="outputPath"/> atomically;
    /// <paramref name="model"/> is rewritten in memory (dispose it afterwards).
    /// </summary>
    /// <exception cref="AdapterMismatchException">An adapter module matches no linear layer of the base (the message lists the closest names), or shapes differ.</exception>
    /// <exception cref="AdapterFormatException">The adapter file is malformed.</exception>
    /// <exception cref="OutputConflictException">The output is the base model.</exception>
    public static MergeReport Merge(Model model, string basePath, string adapterPath, string outputPath, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(basePath);
        ArgumentNullException.ThrowIfNull(adapterPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        if (Path.GetFullPath(basePath) == Path.GetFullPath(outputPath))
        {
            throw new OutputConflictException($"Refusing to merge into '{basePath}' itself: the base is never modified in place.");
        }

        LoraWeights weights = AdapterLoader.Load(adapterPath);
        MergeReport report = MergeInto(model, weights, basePath, adapterPath, options);
        OnnxWriter.Save(model, outputPath, SaveOptions.Like(outputPath, model, options?.Progress, options?.CancellationToken ?? default));
        return report;
    }

    /// <summary>Merges <paramref name="weights"/> into <paramref name="model"/> in memory (weights computed when saved).</summary>
    /// <exception cref="AdapterMismatchException">The model already has LoRA adapters, or a module matches no layer.</exception>
    public static MergeReport MergeInto(Model model, LoraWeights weights, string baseSource, string adapterSource, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(weights);
        if (LoraManifest.Read(model) is not null)
        {
            throw new AdapterMismatchException($"Model '{baseSource}' already has LoRA adapters (metadata '{LoraManifest.MetadataKey}'); merge it as a LoRA model instead of as a base.");
        }

        IReadOnlyList<string> modules = TargetDiscovery.FindAll(model).Select(t => t.Module).ToList();
        LoraWeights part = EncoderDecoderPart.Select(model, weights, modules, out int otherPart);
        LoraWeights matched = ModuleMatcher.Match(part, modules, baseSource, adapterSource);
        var slots = new LoraOptions
        {
            Targets = matched.Modules.Select(m => m.Module).ToList(),
            Placement = LoraPlacement.AdapterSlots,
            Rank = 1,
            Alpha = 1,
        };
        LoraManifest manifest = LoraInjector.Inject(model, slots);
        return LoraMerger.MergeInto(model, manifest, matched, baseSource, options) with { OtherPartModules = otherPart };
    }
}
