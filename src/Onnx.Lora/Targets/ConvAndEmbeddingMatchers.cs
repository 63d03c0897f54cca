using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

/// <summary>
/// Conv(x, W[, bias]) with a constant W [out, in, k…] and group = 1. The layer is read as a linear map of the flattened
/// receptive field: in = in-channels·Πk, out = out-channels, W stored [out, in·Πk] (OutIn) in its own element order.
/// </summary>
public sealed class ConvMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "Conv";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("Conv") || node.Inputs.Count < 2 || node.Inputs[0] is not { } x)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a Conv");
        }

        if (node.GetInt("group", 1) != 1)
        {
            return MatchResult<LinearTarget>.Fail($"Conv '{node.Name}' has group={node.GetInt("group", 1)}; LoRA adapts only group=1 convolutions");
        }

        Value weight = ThroughIdentity(node.Inputs[1]);
        if (ConstantWeights.TensorOf(weight) is not { } w || w.Dims.Count < 3 || !w.DataType.IsFloatingPoint())
        {
            return MatchResult<LinearTarget>.Fail($"Conv '{node.Name}': weight '{node.Inputs[1]?.Name}' is not a constant float tensor [out, in, k…]");
        }

        long[] kernel = w.Dims.Skip(2).ToArray();
        Value? bias = node.Inputs.Count > 2 ? node.Inputs[2] : null;
        bool constantBias = ConstantWeights.TensorOf(bias) is not null;
        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.Conv,
            Activation = x,
            WeightInput = node.Inputs[1]!,
            Weight = weight,
            WeightReshaped = true,
            Layout = WeightLayout.OutIn,
            InFeatures = w.Dims[1] * kernel.Aggregate(1L, (a, k) => a * k),
            OutFeatures = w.Dims[0],
            Kernel = kernel,
            ActivationType = w.DataType,
            Bias = constantBias ? bias!.Name : null,
            BiasInNode = constantBias,
        });
    }

    internal static Value ThroughIdentity(Value? v)
    {
        while (v?.Producer is { } p && p.Is("Identity") && p.Inputs[0] is { } upstream)
        {
            v = upstream;
        }

        return v!;
    }
}

/// <summary>
/// Gather(table, ids) on axis 0 of a constant float table [rows, dim] with non-constant ids: an embedding lookup,
/// read as a linear map of one-hot rows (in = rows, out = dim, W stored [in, out]).
/// </summary>
public sealed class EmbeddingMatcher : ILoraTargetMatcher
{
    /// <inheritdoc />
    public string OpName => "Gather";

    /// <inheritdoc />
    public MatchResult<LinearTarget> Match(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (!node.Is("Gather") || node.Inputs.Count != 2 || node.Inputs[1] is not { } ids || node.GetInt("axis", 0) != 0)
        {
            return MatchResult<LinearTarget>.Fail($"node '{node.Name}' is not a Gather on axis 0");
        }

        Value table = ConvMatcher.ThroughIdentity(node.Inputs[0]);
        if (ConstantWeights.TensorOf(table) is not { } t || t.Dims.Count != 2 || !t.DataType.IsFloatingPoint())
        {
            return MatchResult<LinearTarget>.Fail($"Gather '{node.Name}' does not read a constant float table [rows, dim]");
        }

        if (Readers(table) > 1)
        {
            // NOTE: a tied table (also the lm_head weight) cannot take an embedding-only delta: merge would change the head too.
            return MatchResult<LinearTarget>.Fail($"Gather '{node.Name}' reads table '{table.Name}', which other nodes read too (tied weights)");
        }

        if (ConstantWeights.TensorOf(ids) is not null)
        {
            return MatchResult<LinearTarget>.Fail($"Gather '{node.Name}' reads constant indices (not an embedding lookup)");
        }

        return MatchResult<LinearTarget>.Ok(new LinearTarget
        {
            Node = node,
            OpKind = LinearOpKind.Embedding,
            Activation = ids,
            WeightInput = node.Inputs[0]!,
            Weight = table,
            Layout = WeightLayout.InOut,
            InFeatures = t.Dims[0],
            OutFeatures = t.Dims[1],
            ActivationType = t.DataType,
        });
    }

    // Nodes that read the table, seen through Identity (a tied lm_head often reads it through Identity / Transpose).
    private static int Readers(Value v) =>
        v.Uses.Sum(u => u.Node.Is("Identity") ? Readers(u.Node.Outputs[0]) : 1) + (v.IsGraphOutput ? 1 : 0);
}
