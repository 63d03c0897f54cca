// Merge: W' = W + s·A·B written into the base initializer (DoRA: then each output feature rescaled to m_j / ‖W'_j‖),
// fp16/bf16 weights accumulated in fp32 and rounded once. Every node that reads a LoRA tensor, directly or not, is
// removed and its result replaced by the base path, so the merged graph is the base graph.
using Onnx.Lora.Exporter.Formats;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>What a merge did.</summary>
/// <param name="MergedModules">Modules folded into base weights.</param>
/// <param name="RemovedNodes">LoRA nodes removed.</param>
public sealed record MergeReport(int MergedModules, int RemovedNodes);

/// <summary>Folds LoRA adapters into the base weights of a model written by the rewriter.</summary>
public static class LoraMerger
{
    /// <summary>
    /// Merges the LoRA model at <paramref name="loraModelPath"/> (with its own trained tensors, or with
    /// <paramref name="adapterPath"/> for a serving model) into <paramref name="outputPath"/>. Weights are computed
    /// tensor by tensor while writing; the output is written atomically and the input is never modified.
    /// </summary>
    /// <exception cref="AdapterMismatchException">The model has no manifest, or the adapter does not fit it.</exception>
    /// <exception cref="OnnxSerializationException">The output cannot be written.</exception>
    public static MergeReport Merge(string loraModelPath, string outputPath, string? adapterPath = null)
    {
        ArgumentNullException.ThrowIfNull(loraModelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        if (Path.GetFullPath(loraModelPath) == Path.GetFullPath(outputPath))
        {
            throw new AdapterMismatchException($"Refusing to merge '{loraModelPath}' into itself: the input is never modified in place.");
        }

        using Model model = OnnxReader.Load(loraModelPath);
        LoraManifest manifest = LoraManifest.Read(model)
            ?? throw new AdapterMismatchException($"Model '{loraModelPath}' has no LoRA manifest (metadata '{LoraManifest.MetadataKey}'); it was not written by the rewriter.");
        LoraWeights weights = adapterPath is null
            ? LoraWeights.FromModel(model, manifest, loraModelPath)
            : LoraWeights.FromAdapter(OnnxAdapterFormat.Read(adapterPath), manifest, adapterPath);
        MergeReport report = MergeInto(model, manifest, weights, loraModelPath);
        bool external = model.DataFiles.Count > 0;
        var options = external
            ? new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = Path.GetFileName(outputPath) + ".data" }
            : new SaveOptions { ExternalData = ExternalDataMode.Inline };
        OnnxWriter.Save(model, outputPath, options);
        return report;
    }

    /// <summary>
    /// Rewrites <paramref name="model"/> in memory into its merged base graph: merged weights become deferred
    /// tensors (computed when saved), LoRA nodes, inputs, initializers and the manifest are removed.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A module's weights do not fit, or its branch cannot be separated from the base path.</exception>
    public static MergeReport MergeInto(Model model, LoraManifest manifest, LoraWeights weights, string source)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentNullException.ThrowIfNull(weights);
        Onnx.Lora.Graph.Graph graph = model.Graph;
        int merged = 0;
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            if (weights.Find(info.Module) is { } w)
            {
                ReplaceWeight(graph, info, w, source);
                merged++;
            }
        }

        string? unknown = weights.Modules.Select(m => m.Module).FirstOrDefault(m => manifest.Modules.All(i => i.Module != m));
        if (unknown is not null)
        {
            throw new AdapterMismatchException($"Adapter module '{unknown}' matches no adapted module of model '{source}'.");
        }

        int removed = LoraBranchRemover.Remove(graph, manifest, source);
        model.MetadataProps.RemoveAll(p => p.Key == LoraManifest.MetadataKey);
        return new MergeReport(merged, removed);
    }

    private static void ReplaceWeight(Onnx.Lora.Graph.Graph graph, LoraModuleInfo info, LoraModuleWeights w, string source)
    {
        if (!graph.Initializers.TryGetValue(info.BaseWeight, out Value? value) || value.Initializer is not { } original)
        {
            throw new AdapterMismatchException($"Model '{source}' has no base weight initializer '{info.BaseWeight}' for module '{info.Module}'.");
        }

        if (info.Layout == WeightLayout.MatMulNBits)
        {
            throw new AdapterMismatchException($"Module '{info.Module}' of '{source}' has a MatMulNBits (int4) base; merging into quantized weights is not supported yet.");
        }

        long[] expected = info.Layout == WeightLayout.InOut ? [info.InFeatures, info.OutFeatures] : [info.OutFeatures, info.InFeatures];
        if (!original.Dims.SequenceEqual(expected))
        {
            throw new AdapterMismatchException($"Initializer '{info.BaseWeight}' has shape [{string.Join(",", original.Dims)}]; expected [{string.Join(",", expected)}] ({info.Layout}) for module '{info.Module}'.");
        }

        if (!original.DataType.IsFloatingPoint())
        {
            throw new AdapterMismatchException($"Initializer '{info.BaseWeight}' is {original.DataType.ShortName()}; only float weights can be merged.");
        }

        if (w.InFeatures != info.InFeatures || w.OutFeatures != info.OutFeatures)
        {
            throw new AdapterMismatchException($"Adapter module '{info.Module}' is [{w.InFeatures}→{w.OutFeatures}]; the model's layer is [{info.InFeatures}→{info.OutFeatures}].");
        }

        // NOTE: the merged bytes are computed when the writer reaches this tensor, from the original (possibly
        // memory-mapped) bytes, so only one merged weight is in memory at a time.
        var deferred = new DeferredTensor(info.BaseWeight, original.DataType, original.Dims, () =>
        {
            float[] values = original.ToFloat32();
            LoraMath.AddDelta(values, info.Layout, w.InFeatures, w.OutFeatures, w.A, w.B, w.Rank, w.Scale);
            if (w.Magnitude is { } m)
            {
                LoraMath.ApplyMagnitude(values, info.Layout, w.InFeatures, w.OutFeatures, m);
            }

            foreach (float v in values)
            {
                if (!float.IsFinite(v))
                {
                    throw new AdapterMismatchException($"Merging module '{info.Module}' into '{info.BaseWeight}' gives non-finite values; the adapter is broken (NaN/Inf).");
                }
            }

            return TensorConvert.FromFloat32(values, original.DataType);
        });
        graph.Initializers.SetData(info.BaseWeight, deferred);
    }
}
