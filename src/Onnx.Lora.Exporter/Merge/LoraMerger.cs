// Merge: W' = W + s·A·B written into the base initializer (DoRA: then each output feature rescaled to m_j / ‖W'_j‖),
// fp16/bf16 weights accumulated in fp32 and rounded once. Every node that reads a LoRA tensor, directly or not, is
// removed and its result replaced by the base path, so the merged graph is the base graph.
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>What a merge did.</summary>
/// <param name="MergedModules">Modules folded into base weights.</param>
/// <param name="RemovedNodes">LoRA nodes removed.</param>
public sealed record MergeReport(int MergedModules, int RemovedNodes)
{
    /// <summary>
    /// Re-quantization error per MatMulNBits module (<see cref="QuantizedMergeMode.Requantize"/>). The merged bytes are
    /// computed while the model is written, so this list is complete once the model has been saved.
    /// </summary>
    public IReadOnlyList<QuantizationError> Quantization { get; init; } = [];

    /// <summary>MatMulNBits nodes replaced by float MatMul (<see cref="QuantizedMergeMode.FloatCopy"/>): the graph differs from the base there.</summary>
    public IReadOnlyList<string> ReplacedNodes { get; init; } = [];

    /// <summary>
    /// Adapter modules left out because they belong to the other part of an encoder-decoder export (merge the same
    /// adapter into that part's file); 0 otherwise.
    /// </summary>
    public int OtherPartModules { get; init; }
}

/// <summary>Folds LoRA adapters into the base weights of a model written by the rewriter.</summary>
public static class LoraMerger
{
    /// <summary>
    /// Merges the LoRA model at <paramref name="loraModelPath"/> (with its own trained tensors, or with
    /// <paramref name="adapterPath"/>: an .onnx_adapter named as the model's slots, or a PEFT folder / .safetensors
    /// matched by module name) into <paramref name="outputPath"/>. Weights are computed
    /// tensor by tensor while writing; the output is written atomically and the input is never modified.
    /// </summary>
    /// <exception cref="AdapterMismatchException">The model has no manifest, or the adapter does not fit it.</exception>
    /// <exception cref="OutputConflictException">The output is the input.</exception>
    /// <exception cref="OutputWriteException">The output cannot be written.</exception>
    public static MergeReport Merge(string loraModelPath, string outputPath, string? adapterPath = null, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(loraModelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        if (Path.GetFullPath(loraModelPath) == Path.GetFullPath(outputPath))
        {
            throw new OutputConflictException($"Refusing to merge '{loraModelPath}' into itself: the input is never modified in place.");
        }

        using Model model = OnnxReader.Load(loraModelPath);
        return Merge(model, loraModelPath, outputPath, adapterPath, options);
    }

    /// <summary>
    /// Merges the loaded LoRA model <paramref name="model"/> (read from <paramref name="loraModelPath"/>, which names it
    /// in messages) into <paramref name="outputPath"/>, as <see cref="Merge(string, string, string?, MergeOptions?)"/>;
    /// <paramref name="model"/> is rewritten in memory (dispose it afterwards).
    /// </summary>
    /// <exception cref="AdapterMismatchException">The model has no manifest, or the adapter does not fit it.</exception>
    /// <exception cref="OutputConflictException">The output is the input.</exception>
    /// <exception cref="OutputWriteException">The output cannot be written.</exception>
    public static MergeReport Merge(Model model, string loraModelPath, string outputPath, string? adapterPath = null, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loraModelPath);
        ArgumentNullException.ThrowIfNull(outputPath);
        if (Path.GetFullPath(loraModelPath) == Path.GetFullPath(outputPath))
        {
            throw new OutputConflictException($"Refusing to merge '{loraModelPath}' into itself: the input is never modified in place.");
        }

        LoraManifest manifest = LoraManifest.Read(model)
            ?? throw new AdapterMismatchException($"Model '{loraModelPath}' has no LoRA manifest (metadata '{LoraManifest.MetadataKey}'); it was not written by the rewriter.");
        LoraWeights weights = adapterPath switch
        {
            null => LoraWeights.FromModel(model, manifest, loraModelPath),
            _ when File.Exists(adapterPath) && !adapterPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)
                => LoraWeights.FromAdapter(OnnxAdapterFormat.Read(adapterPath), manifest, adapterPath),
            _ => ModuleMatcher.Match(AdapterLoader.Load(adapterPath), manifest.Modules.Select(m => m.Module).ToList(), loraModelPath, adapterPath),
        };
        MergeReport report = MergeInto(model, manifest, weights, loraModelPath, options);
        OnnxWriter.Save(model, outputPath, SaveOptions.Like(outputPath, model, options?.Progress, options?.CancellationToken ?? default));
        return report;
    }

    /// <summary>
    /// Rewrites <paramref name="model"/> in memory into its merged base graph: merged weights become deferred
    /// tensors (computed when saved), LoRA nodes, inputs, initializers and the manifest are removed.
    /// </summary>
    /// <exception cref="AdapterMismatchException">A module's weights do not fit, or its branch cannot be separated from the base path.</exception>
    public static MergeReport MergeInto(Model model, LoraManifest manifest, LoraWeights weights, string source, MergeOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentNullException.ThrowIfNull(weights);
        options ??= new MergeOptions();
        Onnx.Lora.Ir.Graph graph = model.Graph;
        int merged = 0;
        var quantization = new List<QuantizationError>();
        var floatCopies = new List<(LoraModuleInfo Info, LoraModuleWeights Weights)>();
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            if (weights.Find(info.Module) is not { } w)
            {
                continue;
            }

            CheckFeatures(info, w);
            if (info.Layout != WeightLayout.MatMulNBits)
            {
                ReplaceWeight(graph, info, w, source);
            }
            else if (options.Quantized == QuantizedMergeMode.Requantize)
            {
                QuantizedMerge.Requantize(graph, info, w, source, quantization);
            }
            else
            {
                floatCopies.Add((info, w));
            }

            merged++;
        }

        string? unknown = weights.Modules.Select(m => m.Module).FirstOrDefault(m => manifest.Modules.All(i => i.Module != m));
        if (unknown is not null)
        {
            throw new AdapterMismatchException($"Adapter module '{unknown}' matches no adapted module of model '{source}'.");
        }

        int removed = LoraBranchRemover.Remove(graph, manifest, source);
        foreach ((LoraModuleInfo info, LoraModuleWeights w) in floatCopies)
        {
            QuantizedMerge.ReplaceWithFloatMatMul(model, info, w, source);
        }

        if (!options.ConstantsAsInitializers)
        {
            RestoreConstantNodes(graph, manifest);
        }

        model.MetadataProps.RemoveAll(p => p.Key == LoraManifest.MetadataKey);
        return new MergeReport(merged, removed) { Quantization = quantization, ReplacedNodes = floatCopies.Select(f => f.Info.TargetNode).ToList() };
    }

    // Weights that injection lifted from Constant nodes go back to Constant nodes: the merged graph is the base graph.
    private static void RestoreConstantNodes(Onnx.Lora.Ir.Graph graph, LoraManifest manifest)
    {
        foreach (string name in manifest.Modules.Where(m => m.BaseWeightStorage == ConstantWeights.ConstantNode).Select(m => m.BaseWeight).Distinct(StringComparer.Ordinal))
        {
            if (graph.Initializers.Contains(name))
            {
                ConstantWeights.Lower(graph, name);
            }
        }
    }

    private static bool AllFinite(ReadOnlySpan<float> values)
    {
        foreach (float v in values)
        {
            if (!float.IsFinite(v))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Adds the module's delta to <paramref name="values"/>; false when the result is not finite.</summary>
    private static bool MergeValues(Span<float> values, LoraModuleInfo info, LoraModuleWeights w)
    {
        LoraMath.AddDelta(values, info.Layout, w.InFeatures, w.OutFeatures, w.A, w.B, w.Rank, w.Scale);
        if (w.Magnitude is { } m)
        {
            LoraMath.ApplyMagnitude(values, info.Layout, w.InFeatures, w.OutFeatures, m);
        }

        // A vectorized sum is finite when every value is (an overflowing sum of finite values falls back to the scan).
        return float.IsFinite(System.Numerics.Tensors.TensorPrimitives.Sum<float>(values)) || AllFinite(values);
    }

    /// <summary>
    /// Who is at fault for a non-finite merge: the adapter when it holds NaN/Inf, else the base weight when it does
    /// (read again by the caller: only on this failure path), else the sum overflowed float32.
    /// </summary>
    internal static ToolchainException NonFinite(LoraModuleInfo info, LoraModuleWeights w, bool baseIsFinite, string source)
    {
        if (!float.IsFinite(w.Scale) || !AllFinite(w.A) || !AllFinite(w.B) || (w.Magnitude is { } m && !AllFinite(m)))
        {
            return new AdapterMismatchException($"Merging module '{info.Module}' into '{info.BaseWeight}' gives non-finite values; the adapter is broken (NaN/Inf).");
        }

        return baseIsFinite
            ? new AdapterMismatchException($"Merging module '{info.Module}' into '{info.BaseWeight}' overflows float32: the adapter's delta is too large for this weight.")
            : new OnnxSerializationException($"Base weight '{info.BaseWeight}' of model '{source}' holds NaN/Inf values; the model is broken, not the adapter (module '{info.Module}').");
    }

    private static void CheckFeatures(LoraModuleInfo info, LoraModuleWeights w)
    {
        if (w.InFeatures != info.InFeatures || w.OutFeatures != info.OutFeatures)
        {
            throw new AdapterMismatchException($"Adapter module '{info.Module}' is [{w.InFeatures}→{w.OutFeatures}]; the model's layer is [{info.InFeatures}→{info.OutFeatures}].");
        }
    }

    private static void ReplaceWeight(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, LoraModuleWeights w, string source)
    {
        if (!graph.Initializers.TryGetValue(info.BaseWeight, out Value? value) || value.Initializer is not { } original)
        {
            throw new AdapterMismatchException($"Model '{source}' has no base weight initializer '{info.BaseWeight}' for module '{info.Module}'.");
        }

        long[] expected = info.Layout == WeightLayout.InOut ? [info.InFeatures, info.OutFeatures] : [info.OutFeatures, info.InFeatures];
        // A Reshape-viewed weight is stored in another rank but in the same element order as its 2-D view.
        bool viewed = info.BaseWeightReshaped == true && original.ElementCount == info.InFeatures * info.OutFeatures;
        if (!viewed && !original.Dims.SequenceEqual(expected))
        {
            throw new AdapterMismatchException($"Initializer '{info.BaseWeight}' has shape [{string.Join(",", original.Dims)}]; expected [{string.Join(",", expected)}] ({info.Layout}) for module '{info.Module}'.");
        }

        if (!original.DataType.IsFloatingPoint())
        {
            throw new AdapterMismatchException($"Initializer '{info.BaseWeight}' is {original.DataType.ShortName()}; only float weights can be merged.");
        }

        // NOTE: the merged bytes are computed when the writer reaches this tensor, into the writer's pooled buffer,
        // from the original bytes read with buffered reads (not the memory map, whose pages would stay resident): only
        // one merged weight is in memory at a time and nothing is allocated per weight.
        DataType type = original.DataType;
        var deferred = new DeferredTensor(info.BaseWeight, type, original.Dims, destination =>
        {
            original.CopyTo(destination);
            if (type == DataType.Float)
            {
                // fp32: merged in place in the output bytes (the base is read again only if the result is not finite).
                if (!MergeValues(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(destination), info, w))
                {
                    original.CopyTo(destination);
                    throw NonFinite(info, w, AllFinite(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(destination)), source);
                }

                return;
            }

            // fp16/bf16: accumulated in a pooled float32 work buffer, rounded once at the end.
            int count = checked((int)original.ElementCount);
            float[] work = System.Buffers.ArrayPool<float>.Shared.Rent(count);
            try
            {
                Span<float> values = work.AsSpan(0, count);
                TensorConvert.ToFloat32(destination, type, values);
                if (!MergeValues(values, info, w))
                {
                    // `destination` still holds the base bytes: the merged values are written back only on success.
                    TensorConvert.ToFloat32(destination, type, values);
                    throw NonFinite(info, w, AllFinite(values), source);
                }

                TensorConvert.FromFloat32(values, type, destination);
            }
            finally
            {
                System.Buffers.ArrayPool<float>.Shared.Return(work);
            }
        });
        graph.Initializers.SetData(info.BaseWeight, deferred);
    }
}
