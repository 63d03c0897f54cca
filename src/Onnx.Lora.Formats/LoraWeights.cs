using Onnx.Lora.Ir;

namespace Onnx.Lora.Formats;

/// <summary>
/// The trained numbers of one adapted module, in MatMul layout: A [in, r], B [r, out], and the scale applied to A·B
/// (1 when already folded into B). DoRA adds the magnitude vector [out].
/// </summary>
/// <param name="Module">PEFT module name, e.g. <c>model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="InFeatures">Input features.</param>
/// <param name="OutFeatures">Output features.</param>
/// <param name="Rank">Rank r.</param>
/// <param name="A">A, row-major [in, r].</param>
/// <param name="B">B, row-major [r, out].</param>
/// <param name="Scale">Multiplier of A·B (alpha/r, alpha/√r, or 1 when folded).</param>
/// <param name="Magnitude">DoRA magnitude [out], or null.</param>
public sealed record LoraModuleWeights(string Module, int InFeatures, int OutFeatures, int Rank, float[] A, float[] B, float Scale, float[]? Magnitude = null)
{
    /// <summary>
    /// Conv modules: the kernel's spatial dims (<see cref="InFeatures"/> = in-channels × their product); PEFT stores
    /// lora_A [r, in-channels, k…] and lora_B [out, r, 1…]. Null for other modules.
    /// </summary>
    public IReadOnlyList<long>? Kernel { get; init; }

    /// <summary>True for an Embedding module: PEFT keys lora_embedding_A [r, rows] / lora_embedding_B [dim, r].</summary>
    public bool Embedding { get; init; }

    /// <summary>This module with the PEFT tensor form (Conv kernel, Embedding) of <paramref name="info"/>.</summary>
    public LoraModuleWeights ShapedAs(LoraModuleInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        return this with { Kernel = info.Kernel, Embedding = info.IsEmbedding };
    }

    /// <summary>B with the scale folded in (what .onnx_adapter files and serving graphs carry).</summary>
    public float[] ScaledB()
    {
        float[] b = (float[])B.Clone();
        System.Numerics.Tensors.TensorPrimitives.Multiply(b, Scale, b);
        return b;
    }
}

/// <summary>The weights of a whole adapter, module by module, whatever file they came from.</summary>
public sealed class LoraWeights
{
    /// <summary>Creates the set; module names must be unique.</summary>
    /// <exception cref="AdapterFormatException">A module appears twice.</exception>
    public LoraWeights(IEnumerable<LoraModuleWeights> modules)
    {
        ArgumentNullException.ThrowIfNull(modules);
        Modules = modules.ToList();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (LoraModuleWeights m in Modules)
        {
            if (!seen.Add(m.Module))
            {
                throw new AdapterFormatException($"Module '{m.Module}' appears twice in the adapter.");
            }

            if (m.A.Length != (long)m.InFeatures * m.Rank || m.B.Length != (long)m.Rank * m.OutFeatures)
            {
                throw new AdapterFormatException($"Module '{m.Module}': A has {m.A.Length} values and B {m.B.Length}; [in={m.InFeatures}, r={m.Rank}] and [r, out={m.OutFeatures}] need {(long)m.InFeatures * m.Rank} and {(long)m.Rank * m.OutFeatures}.");
            }
        }
    }

    /// <summary>Modules in order.</summary>
    public IReadOnlyList<LoraModuleWeights> Modules { get; }

    /// <summary>The module named <paramref name="module"/>, or null.</summary>
    public LoraModuleWeights? Find(string module) => Modules.FirstOrDefault(m => m.Module == module);

    /// <summary>Reads A, B (and DoRA magnitudes) from the initializers of a LoRA model written by the rewriter.</summary>
    /// <exception cref="AdapterMismatchException">The model holds adapter slots (no trained values), or a tensor is missing or misshaped.</exception>
    public static LoraWeights FromModel(Model loraModel, LoraManifest manifest, string source)
    {
        ArgumentNullException.ThrowIfNull(loraModel);
        ArgumentNullException.ThrowIfNull(manifest);
        if (manifest.Placement == LoraPlacement.AdapterSlots)
        {
            throw new AdapterMismatchException($"Model '{source}' is a serving model with empty adapter slots; give the adapter file (.onnx_adapter) to merge.");
        }

        var modules = new List<LoraModuleWeights>();
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            float[] a = ReadInitializer(loraModel, info.LoraA, info.InFeatures, info.Rank, source);
            float[] b = ReadInitializer(loraModel, info.LoraB, info.Rank, info.OutFeatures, source);
            float scale = info.ScaleTensor is { } s ? ReadInitializer(loraModel, s, -1, -1, source)[0] : (float)info.Scaling;
            float[]? magnitude = info.Magnitude is { } mag ? ReadInitializer(loraModel, mag, info.OutFeatures, -1, source) : null;
            modules.Add(new LoraModuleWeights(info.Module, (int)info.InFeatures, (int)info.OutFeatures, info.Rank, a, b, scale, magnitude).ShapedAs(info));
        }

        return new LoraWeights(modules);
    }

    /// <summary>Reads the modules of <paramref name="manifest"/> from an adapter file (B already scaled, so scale 1).</summary>
    /// <exception cref="AdapterMismatchException">A tensor is missing, misshaped, or the adapter has tensors no module uses.</exception>
    public static LoraWeights FromAdapter(AdapterFile adapter, LoraManifest manifest, string source)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        ArgumentNullException.ThrowIfNull(manifest);
        var used = new HashSet<string>(StringComparer.Ordinal);
        var modules = new List<LoraModuleWeights>();
        foreach (LoraModuleInfo info in manifest.Modules)
        {
            AdapterParameter? a = adapter.Find(info.LoraA);
            AdapterParameter? b = adapter.Find(info.LoraB);
            if (a is null && b is null)
            {
                continue; // An adapter may adapt a subset of the slots; the rest stay at r = 0.
            }

            if (a is null || b is null)
            {
                throw new AdapterMismatchException($"Adapter '{source}' has only one of '{info.LoraA}' / '{info.LoraB}'.");
            }

            if (a.Dims.Count != 2 || b.Dims.Count != 2 || a.Dims[0] != info.InFeatures || b.Dims[1] != info.OutFeatures || a.Dims[1] != b.Dims[0])
            {
                throw new AdapterMismatchException($"Adapter '{source}': '{a.Name}' is [{string.Join(",", a.Dims)}] and '{b.Name}' [{string.Join(",", b.Dims)}]; module '{info.Module}' needs [in={info.InFeatures}, r] and [r, out={info.OutFeatures}].");
            }

            AdapterParameter? magnitudeParameter = info.Magnitude is { } mag ? adapter.Find(mag) : null;
            foreach (AdapterParameter? p in (AdapterParameter?[])[a, b, magnitudeParameter])
            {
                if (p is not null)
                {
                    LoraTensorTypes.Require(p.DataType, p.Name, source);
                }
            }

            float[]? magnitude = magnitudeParameter?.ToFloat32();
            used.Add(a.Name);
            used.Add(b.Name);
            if (info.Magnitude is not null)
            {
                used.Add(info.Magnitude);
            }

            modules.Add(new LoraModuleWeights(info.Module, (int)info.InFeatures, (int)info.OutFeatures, (int)a.Dims[1], a.ToFloat32(), b.ToFloat32(), 1f, magnitude).ShapedAs(info));
        }

        string? stray = adapter.Parameters.Select(p => p.Name).FirstOrDefault(n => !used.Contains(n));
        if (stray is not null)
        {
            throw new AdapterMismatchException($"Parameter '{stray}' of adapter '{source}' matches no adapted module of the model.");
        }

        return new LoraWeights(modules);
    }

    /// <summary>
    /// The adapter file for a serving model: tensors named as the manifest's A and B (the serving model's inputs),
    /// A [in, r], B [r, out] with the scale folded in, float32.
    /// </summary>
    /// <exception cref="AdapterMismatchException">DoRA adapters cannot be served through additive slots.</exception>
    public AdapterFile ToAdapterFile(LoraManifest manifest, int adapterVersion = 0, int modelVersion = 0)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        var parameters = new List<AdapterParameter>();
        foreach (LoraModuleWeights m in Modules)
        {
            LoraModuleInfo info = manifest.Modules.FirstOrDefault(i => i.Module == m.Module)
                ?? throw new AdapterMismatchException($"Module '{m.Module}' is not adapted in the serving model.");
            if (m.Magnitude is not null)
            {
                throw new AdapterMismatchException($"Module '{m.Module}' uses DoRA, whose output is rescaled per column; an additive adapter slot cannot express it. Merge instead.");
            }

            parameters.Add(AdapterParameter.FromFloats(info.LoraA, [m.InFeatures, m.Rank], m.A));
            parameters.Add(AdapterParameter.FromFloats(info.LoraB, [m.Rank, m.OutFeatures], m.ScaledB()));
        }

        return new AdapterFile { AdapterVersion = adapterVersion, ModelVersion = modelVersion, Parameters = parameters };
    }

    private static float[] ReadInitializer(Model model, string name, long rows, long cols, string source)
    {
        if (!model.Graph.Initializers.TryGetValue(name, out Value? value) || value.Initializer is not { } tensor)
        {
            throw new AdapterMismatchException($"Model '{source}' has no initializer '{name}' that its LoRA manifest names.");
        }

        bool shapeOk = rows < 0 || (cols < 0 ? tensor.Dims.Count == 1 && tensor.Dims[0] == rows : tensor.Dims.Count == 2 && tensor.Dims[0] == rows && tensor.Dims[1] == cols);
        if (!shapeOk)
        {
            throw new AdapterMismatchException($"Initializer '{name}' of model '{source}' has shape [{string.Join(",", tensor.Dims)}]; the manifest implies [{rows}{(cols < 0 ? string.Empty : "," + cols)}].");
        }

        return tensor.ToFloat32();
    }
}
