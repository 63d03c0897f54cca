using System.Globalization;
using System.Text.RegularExpressions;

namespace Onnx.Lora.Families;

/// <summary>A linear layer's module name as PEFT names it, with what the name says about the layer.</summary>
/// <param name="Name">Dotted module path, e.g. <c>model.layers.3.self_attn.q_proj</c>.</param>
/// <param name="LayerIndex">Decoder layer index, when the name (or the graph structure) gives one.</param>
/// <param name="Role">Attention / MLP / output head, when the family knows the projection.</param>
/// <param name="Family">The family whose projection names matched, null when none did.</param>
public sealed record ModuleName(string Name, int? LayerIndex, ModuleRole Role, string? Family)
{
    /// <summary>The last component of the module path (what PEFT's target_modules suffix match compares).</summary>
    public string LastComponent => Name[(Name.LastIndexOf('.') + 1)..];
}

/// <summary>The names a graph gives one linear layer, from which its module name is recovered.</summary>
public sealed record NamingHints
{
    /// <summary>Name of the node (MatMul, Gemm, ...), e.g. <c>/model/layers.3/self_attn/q_proj/MatMul</c>.</summary>
    public string? NodeName { get; init; }

    /// <summary>Operator type of the node, so an op token at the end of a node path can be dropped.</summary>
    public string? OpType { get; init; }

    /// <summary>Name of the weight initializer (anonymous torch names such as <c>onnx::MatMul_123</c> are ignored).</summary>
    public string? WeightName { get; init; }

    /// <summary>Name of the node's output value.</summary>
    public string? OutputName { get; init; }

    /// <summary>Decoder layer the node belongs to by graph structure, used only when no name carries an index.</summary>
    public int? StructuralLayer { get; init; }
}

/// <summary>
/// Recovers PEFT module names from the names exporters give nodes and initializers:
/// torch.onnx (<c>/model/layers.3/self_attn/q_proj/MatMul</c>), ORT GenAI's model builder
/// (<c>/model/layers.0/attn/qkv_proj/MatMul</c>, <c>model.layers.0.attn.q_proj.MatMul.weight_Q4</c>), HF GPT-2 weights
/// fused by ORT's transformers optimizer (<c>transformer.h.0.attn.c_attn.weight</c>) and compact hand-made graphs
/// (<c>l0.q.w</c>), using the family tables of <see cref="KnownFamilies"/>.
/// </summary>
public static partial class ModuleNaming
{
    private static readonly HashSet<string> s_layerContainers = new(StringComparer.Ordinal) { "layers", "layer", "h", "blocks", "block" };

    private static readonly HashSet<string> s_tensorSuffixes = new(StringComparer.Ordinal) { "weight", "w", "bias", "b", "kernel", "qweight", "MatMul", "Gemm", "MatMulNBits" };

    /// <summary>Resolves the module name of one linear layer from its hints, preferring the most informative name.</summary>
    public static ModuleName Resolve(NamingHints hints)
    {
        ArgumentNullException.ThrowIfNull(hints);
        string[]? tokens = null;
        if (hints.NodeName is { } node && node.Contains('/', StringComparison.Ordinal))
        {
            tokens = FromPath(node);
        }

        if ((tokens is null || tokens.Length == 0) && hints.WeightName is { } weight && !IsAnonymous(weight))
        {
            tokens = FromTensorName(weight);
        }

        if ((tokens is null || tokens.Length == 0) && hints.OutputName is { } output && output.Length > 0)
        {
            tokens = output.Contains('/', StringComparison.Ordinal) ? FromPath(output) : FromTensorName(output);
        }

        if ((tokens is null || tokens.Length == 0) && !string.IsNullOrEmpty(hints.NodeName))
        {
            tokens = FromTensorName(hints.NodeName);
        }

        if (tokens is null || tokens.Length == 0)
        {
            return new ModuleName("linear", hints.StructuralLayer, ModuleRole.Unknown, null);
        }

        return Canonicalize(tokens, hints.StructuralLayer);
    }

    /// <summary>True for initializer names that carry no module information (torch's <c>onnx::MatMul_123</c>, bare numbers).</summary>
    public static bool IsAnonymous(string tensorName)
    {
        ArgumentNullException.ThrowIfNull(tensorName);
        return tensorName.Length == 0 || tensorName.StartsWith("onnx::", StringComparison.Ordinal) || tensorName.All(char.IsAsciiDigit);
    }

    /// <summary>The decoder layer index in a dotted module path (<c>layers.3</c>, <c>h.3</c>, <c>layer.3</c>, <c>blocks.3</c>), or null.</summary>
    public static int? ParseLayerIndex(string moduleName)
    {
        ArgumentNullException.ThrowIfNull(moduleName);
        Match m = LayerIndexRegex().Match(moduleName);
        return m.Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : null;
    }

    /// <summary>True when the module is an output head (lm_head and the like).</summary>
    public static bool IsOutputHead(string moduleName)
    {
        ArgumentNullException.ThrowIfNull(moduleName);
        return KnownFamilies.OutputHeads.Contains(moduleName[(moduleName.LastIndexOf('.') + 1)..]);
    }

    private static string[] FromPath(string path)
    {
        // "/model/layers.3/self_attn/q_proj/MatMul" or an output "/model/layers.0/attn/q_proj/MatMul/output_0".
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries).ToList();
        if (parts.Count > 0 && OutputTokenRegex().IsMatch(parts[^1]))
        {
            parts.RemoveAt(parts.Count - 1);
        }

        if (parts.Count > 0 && OpTokenRegex().IsMatch(parts[^1]))
        {
            parts.RemoveAt(parts.Count - 1);
        }

        return parts.SelectMany(p => p.Split('.', StringSplitOptions.RemoveEmptyEntries)).ToArray();
    }

    private static string[] FromTensorName(string name)
    {
        string trimmed = WeightSuffixRegex().Replace(name, string.Empty);
        var parts = trimmed.Split(['.', '/'], StringSplitOptions.RemoveEmptyEntries).ToList();
        while (parts.Count > 1 && (s_tensorSuffixes.Contains(parts[^1]) || QuantSuffixRegex().IsMatch(parts[^1]) || PaddleParameterRegex().IsMatch(parts[^1])))
        {
            parts.RemoveAt(parts.Count - 1);
        }

        return parts.ToArray();
    }

    private static ModuleName Canonicalize(string[] tokens, int? structuralLayer)
    {
        var parts = tokens.ToList();

        // The projection: canonical name of the last token in the first family that knows it.
        string last = parts[^1];
        ModelFamily? family = null;
        ModuleRole role = ModuleRole.Unknown;
        foreach (ModelFamily f in KnownFamilies.All)
        {
            if (f.Containers is { } containers && (parts.Count < 2 || !containers.Contains(parts[^2])))
            {
                continue;
            }

            string canonical = f.Aliases.GetValueOrDefault(last, last);
            if (f.Projections.TryGetValue(canonical, out ModuleRole r))
            {
                family = f;
                role = r;
                parts[^1] = canonical;
                break;
            }
        }

        if (KnownFamilies.OutputHeads.Contains(parts[^1]))
        {
            role = ModuleRole.OutputHead;
        }

        // The layer: "layers.3" style keeps the path; a compact "l3" token becomes the family's layer prefix.
        int? layer = null;
        int layerEnd = -1;
        for (int i = 0; i + 1 < parts.Count; i++)
        {
            if (s_layerContainers.Contains(parts[i]) && int.TryParse(parts[i + 1], NumberStyles.None, CultureInfo.InvariantCulture, out int n))
            {
                layer = n;
                layerEnd = i + 2;
                break;
            }
        }

        if (layer is null)
        {
            for (int i = 0; i < parts.Count - 1; i++)
            {
                Match m = CompactLayerRegex().Match(parts[i]);
                if (m.Success)
                {
                    layer = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                    parts.RemoveRange(0, i + 1);
                    layerEnd = 0;
                    break;
                }
            }

            if (layer is null && structuralLayer is not null && family is not null && role is ModuleRole.Attention or ModuleRole.Mlp)
            {
                layer = structuralLayer;
                layerEnd = 0;
            }

            if (layer is not null && layerEnd == 0 && family is not null)
            {
                // Names without a module tree (l0.q, attn.q): rebuild the tree as the HF model names it.
                bool hasContainer = parts.Count > 1;
                var prefix = string.Format(CultureInfo.InvariantCulture, family.LayerPrefixFormat, layer.Value).Split('.').ToList();
                if (!hasContainer && role is ModuleRole.Attention or ModuleRole.Mlp)
                {
                    prefix.Add(role == ModuleRole.Attention ? family.AttentionContainer : family.MlpContainer);
                }

                parts.InsertRange(0, prefix);
            }
        }

        return new ModuleName(string.Join('.', parts), layer, role, family?.Name);
    }

    [GeneratedRegex(@"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")]
    private static partial Regex LayerIndexRegex();

    [GeneratedRegex(@"^(?:output_\d+|output)$")]
    private static partial Regex OutputTokenRegex();

    // An operator token at the end of a node path: MatMul, MatMul_1, Gemm, MatMulNBits, Add_3, GenAI's MatMul_Q4 ...
    [GeneratedRegex(@"^[A-Z][A-Za-z0-9]*(?:_[A-Z]?\d+)*$")]
    private static partial Regex OpTokenRegex();

    [GeneratedRegex(@"(?:[._](?:weight|w)(?:_Q\d+(?:G\d+)?)?|_output(?:_\d+)?)$")]
    private static partial Regex WeightSuffixRegex();

    [GeneratedRegex(@"^weight_Q\d+(?:G\d+)?$|^MatMul_\d+$")]
    private static partial Regex QuantSuffixRegex();

    // Paddle parameter names: "linear_3.w_0" (weight), "linear_3.b_0" (bias), "conv2d_1.w_0".
    [GeneratedRegex(@"^[wb]_\d+$")]
    private static partial Regex PaddleParameterRegex();

    [GeneratedRegex(@"^l(?:ayer)?_?(\d+)$")]
    private static partial Regex CompactLayerRegex();
}
