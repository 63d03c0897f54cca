using System.Text.Json;
using System.Text.Json.Serialization;
using Onnx.Lora.Ir;

namespace Onnx.Lora;

/// <summary>How the frozen base weight of an adapted linear layer is stored.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<WeightLayout>))]
public enum WeightLayout
{
    /// <summary>W is [in, out] and y = x·W (torch.onnx MatMul on a pre-transposed weight; Gemm transB=0).</summary>
    InOut,

    /// <summary>W is [out, in] and y = x·Wᵀ (Gemm transB=1, or MatMul through a Transpose of the weight).</summary>
    OutIn,

    /// <summary>W is int4 MatMulNBits data [out, blocks, blob] with scales (and zero points); y = x·dequant(W)ᵀ.</summary>
    MatMulNBits,
}

/// <summary>Where the LoRA tensors live in the rewritten model.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<LoraPlacement>))]
public enum LoraPlacement
{
    /// <summary>A and B are initializers and the branch multiplies by the scale: the trainable model.</summary>
    Initializers,

    /// <summary>A and B are graph inputs with r=0 initializer defaults and the scale is folded into B: the serving model for .onnx_adapter files.</summary>
    AdapterSlots,
}

/// <summary>One adapted linear layer: y = x·W + scale · (dropout(x)·A)·B.</summary>
public sealed record LoraModuleInfo
{
    /// <summary>Module name as PEFT names it, e.g. <c>model.layers.0.self_attn.q_proj</c>.</summary>
    public required string Module { get; init; }

    /// <summary>Name of the base node (MatMul, Gemm or MatMulNBits) the branch is added to.</summary>
    public required string TargetNode { get; init; }

    /// <summary>Initializer holding the frozen base weight W.</summary>
    public required string BaseWeight { get; init; }

    /// <summary>How W is stored.</summary>
    public required WeightLayout Layout { get; init; }

    /// <summary>Input features.</summary>
    public required long InFeatures { get; init; }

    /// <summary>Output features.</summary>
    public required long OutFeatures { get; init; }

    /// <summary>Rank r (0 for an empty adapter slot).</summary>
    public required int Rank { get; init; }

    /// <summary>LoRA alpha.</summary>
    public required double Alpha { get; init; }

    /// <summary>Scale is alpha/sqrt(r) (rsLoRA) instead of alpha/r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>The scale applied to the branch: alpha/r or alpha/sqrt(r).</summary>
    public double Scaling => LoraConfig.Scaling(Rank, Alpha, UseRsLora);

    /// <summary>Name of A, [in, r] (an initializer, or a graph input for adapter slots).</summary>
    public required string LoraA { get; init; }

    /// <summary>Name of B, [r, out].</summary>
    public required string LoraB { get; init; }

    /// <summary>DoRA magnitude vector [out], null without DoRA.</summary>
    public string? Magnitude { get; init; }

    /// <summary>Scalar initializer holding the scale in the training placement, null when folded into B.</summary>
    public string? ScaleTensor { get; init; }

    /// <summary>MatMulNBits block size (quantized bases only).</summary>
    public int? BlockSize { get; init; }

    /// <summary>MatMulNBits scales initializer (quantized bases only).</summary>
    public string? Scales { get; init; }

    /// <summary>MatMulNBits zero points initializer, if any.</summary>
    public string? ZeroPoints { get; init; }

    /// <summary>Initializer holding the bias added after the layer (Gemm C, or a following Add), if any.</summary>
    public string? Bias { get; init; }

    /// <summary>Zero-based decoder layer index parsed from the module name, if it has one.</summary>
    public int? LayerIndex { get; init; }

    /// <summary>Operator of the target node: MatMul, Gemm, MatMulNBits, Attention (fused qkv weight: W' = W + s·A·B feeds the op), Conv or Embedding. Optional, added by the rewriter.</summary>
    public string? OpKind { get; init; }

    /// <summary>MatMulNBits bits per weight (quantized bases only). Optional.</summary>
    public int? Bits { get; init; }

    /// <summary>The rank the user asked for; differs from <see cref="Rank"/> (0) for adapter slots. Optional.</summary>
    public int? RequestedRank { get; init; }

    /// <summary>
    /// "Constant" when the base stored W as a Constant node that injection lifted to an initializer (merge puts it back);
    /// null for an initializer. Optional.
    /// </summary>
    public string? BaseWeightStorage { get; init; }

    /// <summary>True when a Reshape views the stored W (of another rank) as the 2-D weight; null otherwise. Optional.</summary>
    public bool? BaseWeightReshaped { get; init; }

    /// <summary>
    /// Conv modules: the kernel's spatial dims; <see cref="InFeatures"/> is in-channels × their product and PEFT stores
    /// lora_A [r, in-channels, k…], lora_B [out, r, 1…]. Null for other modules. Optional.
    /// </summary>
    public IReadOnlyList<long>? Kernel { get; init; }

    /// <summary>True for an Embedding (Gather) module: PEFT names its tensors lora_embedding_A / lora_embedding_B.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool IsEmbedding => OpKind == "Embedding";
}

/// <summary>
/// What the rewriter did, stored in the model's metadata under <see cref="MetadataKey"/> so the trainer, merger
/// and exporters work from facts instead of rediscovering targets.
/// </summary>
public sealed record LoraManifest
{
    /// <summary>Metadata key of the JSON manifest.</summary>
    public const string MetadataKey = "onnx_lora.manifest";

    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    /// <summary>Manifest format version.</summary>
    public int Version { get; init; } = 1;

    /// <summary>Where A and B live.</summary>
    public required LoraPlacement Placement { get; init; }

    /// <summary>Element type of the LoRA parameters (float32 even for fp16 bases).</summary>
    public DataType ParameterType { get; init; } = DataType.Float;

    /// <summary>Dropout probability in training graphs (0 for none).</summary>
    public double Dropout { get; init; }

    /// <summary>True when DoRA is used.</summary>
    public bool UseDora { get; init; }

    /// <summary>Initializer names of the base weights that PiSSA replaced with residuals, if PiSSA was used.</summary>
    public bool Pissa { get; init; }

    /// <summary>The adapted modules, in graph order.</summary>
    public required IReadOnlyList<LoraModuleInfo> Modules { get; init; }

    /// <summary>
    /// The user's LoRA configuration (PEFT's fields: r, lora_alpha, use_rslora, targets, layers, exclusions, patterns,
    /// base model) as inject received it; null in manifests written before it was recorded.
    /// </summary>
    [JsonConverter(typeof(LoraConfigJsonConverter))]
    public LoraConfig? Config { get; init; }

    /// <summary>
    /// <see cref="Config"/>, or for older manifests one that PEFT reads as exactly these modules: the full module names
    /// as targets, the most common rank and alpha as r and lora_alpha, and per-module patterns for the rest.
    /// </summary>
    public LoraConfig ConfigOrDerived()
    {
        if (Config is not null)
        {
            return Config;
        }

        int RankOf(LoraModuleInfo m) => m.RequestedRank ?? m.Rank;
        int rank = Modules.Count == 0 ? 8 : Modules.GroupBy(RankOf).MaxBy(g => g.Count())!.Key;
        double alpha = Modules.Count == 0 ? 8 : Modules.GroupBy(m => m.Alpha).MaxBy(g => g.Count())!.Key;
        return new LoraConfig
        {
            Rank = rank,
            Alpha = alpha,
            Dropout = Dropout,
            UseRsLora = Modules.Any(m => m.UseRsLora),
            UseDora = UseDora,
            Init = Pissa ? LoraInit.Pissa : LoraInit.KaimingUniform,
            Targets = Modules.Select(m => m.Module).ToArray(),
            RankPattern = Modules.Where(m => RankOf(m) != rank).Select(m => new PatternOverride(EscapeRegex(m.Module), RankOf(m))).ToArray(),
            AlphaPattern = Modules.Where(m => m.Alpha != alpha).Select(m => new PatternOverride(EscapeRegex(m.Module), m.Alpha)).ToArray(),
        };
    }

    /// <summary>A regex matching <paramref name="literal"/> only, in the syntax both .NET and Python's re accept.</summary>
    public static string EscapeRegex(string literal)
    {
        ArgumentNullException.ThrowIfNull(literal);
        var sb = new System.Text.StringBuilder(literal.Length + 8);
        foreach (char c in literal)
        {
            if (c < 128 && !(char.IsAsciiLetterOrDigit(c) || c == '_'))
            {
                sb.Append('\\');
            }

            sb.Append(c);
        }

        return sb.ToString();
    }

    /// <summary>Every trainable tensor name: A, B and DoRA magnitudes.</summary>
    public IEnumerable<string> TrainableTensors() =>
        Modules.SelectMany(m => m.Magnitude is null ? new[] { m.LoraA, m.LoraB } : [m.LoraA, m.LoraB, m.Magnitude]);

    /// <summary>Reads the manifest of <paramref name="model"/>, or null when it has none.</summary>
    /// <exception cref="GraphValidationException">The manifest is not valid JSON.</exception>
    public static LoraManifest? Read(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        string? json = model.MetadataProps.LastOrDefault(p => p.Key == MetadataKey).Value;
        if (json is null)
        {
            return null;
        }

        return Parse(json, $"Metadata '{MetadataKey}' of the model");
    }

    /// <summary>The manifest as the JSON stored in a model's metadata.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, s_json);

    /// <summary>Reads a manifest from the JSON <see cref="ToJson"/> writes.</summary>
    /// <exception cref="GraphValidationException">The text is not a valid manifest.</exception>
    public static LoraManifest FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        return Parse(json, "The manifest text") ?? throw new GraphValidationException("The manifest text is not a valid LoRA manifest: null.");
    }

    private static LoraManifest? Parse(string json, string source)
    {
        try
        {
            return JsonSerializer.Deserialize<LoraManifest>(json, s_json);
        }
        catch (JsonException e)
        {
            throw new GraphValidationException($"{source} is not a valid LoRA manifest: {e.Message}", e);
        }
    }

    /// <summary>Stores this manifest in <paramref name="model"/>'s metadata (replacing an older one).</summary>
    public void Write(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        model.MetadataProps.RemoveAll(p => p.Key == MetadataKey);
        model.MetadataProps.Add(KeyValuePair.Create(MetadataKey, ToJson()));
    }
}
