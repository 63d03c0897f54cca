using Onnx.Lora.Ir;
using Onnx.Lora.Targets;

namespace Onnx.Lora;

/// <summary>What <c>onnx-lora inspect</c> reports about a model: ops, parameters and targetable linear layers. Reads no weight bytes.</summary>
public sealed record ModelSummary
{
    /// <summary>Node count per op (domain-qualified for non-ONNX domains), subgraphs included, most frequent first.</summary>
    public required IReadOnlyList<KeyValuePair<string, int>> OpHistogram { get; init; }

    /// <summary>Number of parameters: elements of floating-point initializers and Constant-node tensors, plus K·N logical weights per MatMulNBits / quantized weight.</summary>
    public required long ParameterCount { get; init; }

    /// <summary>Bytes of all initializers as stored.</summary>
    public required long ParameterBytes { get; init; }

    /// <summary>Bytes stored in external data files.</summary>
    public required long ExternalBytes { get; init; }

    /// <summary>Every targetable linear layer, output heads included (marked).</summary>
    public required IReadOnlyList<LinearTarget> LinearLayers { get; init; }

    /// <summary>Every targetable Conv layer (group = 1); chosen by name or regex, never by all-linear.</summary>
    public IReadOnlyList<LinearTarget> ConvLayers { get; init; } = [];

    /// <summary>Every targetable embedding lookup (Gather of a constant table); chosen by name or regex, never by all-linear.</summary>
    public IReadOnlyList<LinearTarget> EmbeddingLayers { get; init; } = [];

    /// <summary>Summarizes <paramref name="model"/>.</summary>
    public static ModelSummary Create(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var histogram = model.Graph.AllNodes()
            .GroupBy(n => n.IsStandardDomain ? n.OpType : $"{n.Domain}::{n.OpType}", StringComparer.Ordinal)
            .Select(g => KeyValuePair.Create(g.Key, g.Count()))
            .OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .ToList();
        IReadOnlyList<LinearTarget> targets = TargetDiscovery.FindAll(model);
        var quantized = targets.Where(t => t.Quantized).ToDictionary(t => t.Weight.Name, t => t.WeightParameters, StringComparer.Ordinal);
        long count = 0, bytes = 0, external = 0;
        // Weights stored as Constant nodes (paddle2onnx, older tf2onnx) are parameters as much as initializers are.
        IEnumerable<Value> constants = model.Graph.Nodes.SelectMany(n => n.Outputs).Where(ConstantWeights.IsConstantNodeOutput);
        foreach (Value v in model.Graph.Initializers.Values.Concat(constants))
        {
            Tensor t = ConstantWeights.TensorOf(v)!;
            bytes += t.ByteLength;
            external += t.IsExternal ? t.ByteLength : 0;
            if (quantized.TryGetValue(v.Name, out long logical))
            {
                count += logical;
            }
            else if (t.DataType.IsFloatingPoint())
            {
                count += t.ElementCount;
            }
        }

        return new ModelSummary
        {
            OpHistogram = histogram,
            ParameterCount = count,
            ParameterBytes = bytes,
            ExternalBytes = external,
            LinearLayers = targets.Where(t => t.IsLinear).ToList(),
            ConvLayers = targets.Where(t => t.OpKind == LinearOpKind.Conv).ToList(),
            EmbeddingLayers = targets.Where(t => t.OpKind == LinearOpKind.Embedding).ToList(),
        };
    }
}
