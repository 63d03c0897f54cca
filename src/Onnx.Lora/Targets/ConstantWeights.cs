// Weights stored as Constant NODES (paddle2onnx, older tf2onnx, some torch exports) instead of initializers.
// Lift:  Constant(value=T) → %W   becomes   initializer %W = T         (same name, same bytes, same uses)
// Lower: initializer %W = T      becomes   Constant(value=T) → %W      (the inverse, used by merge)
// Neither changes any output of the graph: only where the same tensor is stored.
using Onnx.Lora.Ir;

namespace Onnx.Lora.Targets;

using Graph = Onnx.Lora.Ir.Graph;

/// <summary>Finds, lifts and lowers weights that a graph stores as <c>Constant</c> nodes.</summary>
public static class ConstantWeights
{
    /// <summary>Value of <see cref="LoraModuleInfo.BaseWeightStorage"/> for a weight the base stored as a Constant node.</summary>
    public const string ConstantNode = "Constant";

    /// <summary>The constant tensor <paramref name="value"/> holds: its initializer data, or the <c>value</c> of the Constant node producing it.</summary>
    public static Tensor? TensorOf(Value? value)
    {
        if (value is null)
        {
            return null;
        }

        if (value.Initializer is { } t)
        {
            return t;
        }

        return value.Producer is { } p && IsTensorConstant(p) ? p.GetAttribute("value")!.AsTensor() : null;
    }

    /// <summary>True when <paramref name="value"/> is the output of a standard-domain Constant node with a tensor <c>value</c>.</summary>
    public static bool IsConstantNodeOutput(Value value)
    {
        ArgumentNullException.ThrowIfNull(value);
        return value.Initializer is null && value.Producer is { } p && IsTensorConstant(p);
    }

    /// <summary>
    /// Turns the Constant node producing <paramref name="value"/> into an initializer of the same name holding the same
    /// tensor, read by the same nodes. Returns the initializer value.
    /// </summary>
    /// <exception cref="GraphValidationException"><paramref name="value"/> is not a Constant node output of <paramref name="graph"/>.</exception>
    public static Value Lift(Graph graph, Value value)
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(value);
        if (!IsConstantNodeOutput(value) || !ReferenceEquals(value.Producer!.Graph, graph))
        {
            throw new GraphValidationException($"Value '{value.Name}' is not the output of a Constant node of graph '{graph.Name}'.");
        }

        Node constant = value.Producer!;
        Tensor tensor = constant.GetAttribute("value")!.AsTensor();
        string name = value.Name;
        value.Name = name + "/lifting";
        Value lifted = graph.AddInitializer(WithName(tensor, name));
        value.ReplaceAllUsesWith(lifted, replaceGraphOutputs: true);
        graph.Remove(constant);
        return lifted;
    }

    /// <summary>
    /// Turns initializer <paramref name="name"/> back into a Constant node of the same output name placed first in the
    /// graph. The tensor is kept as is (a deferred merged weight is computed when the model is written).
    /// </summary>
    /// <exception cref="GraphValidationException">The graph has no such initializer, or it is also a graph input.</exception>
    public static Value Lower(Graph graph, string name)
    {
        ArgumentNullException.ThrowIfNull(graph);
        ArgumentNullException.ThrowIfNull(name);
        if (!graph.Initializers.TryGetValue(name, out Value? value) || value.IsGraphInput)
        {
            throw new GraphValidationException($"Graph '{graph.Name}' has no initializer '{name}' that can become a Constant node.");
        }

        Tensor tensor = value.Initializer!;
        var node = new Node(string.Empty, "Constant", [], [name + "/lowering"], [Attr.Tensor("value", tensor)], name + "/Constant");
        if (graph.Nodes.Count > 0)
        {
            graph.InsertBefore(graph.Nodes[0], node);
        }
        else
        {
            graph.Add(node);
        }

        Value output = node.Outputs[0];
        output.Type = value.Type;
        value.ReplaceAllUsesWith(output, replaceGraphOutputs: true);
        graph.Initializers.Remove(name);
        output.Name = name;
        return output;
    }

    private static bool IsTensorConstant(Node node) =>
        node.Is("Constant") && node.GetAttribute("value") is { Type: AttrType.Tensor };

    private static Tensor WithName(Tensor tensor, string name)
    {
        // The Constant's tensor may carry its own (or no) name; the initializer must be named as the value it defines.
        tensor.Name = name;
        return tensor;
    }
}
