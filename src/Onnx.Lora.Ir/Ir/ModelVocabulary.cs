namespace Onnx.Lora.Ir;

/// <summary>What a language model's graph says about its vocabulary (read by training and by generation).</summary>
public static class ModelVocabulary
{
    /// <summary>The model's vocabulary (logits' last axis, else the embedding Gather's rows), or null when neither tells.</summary>
    public static int? TryRead(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Value? logits = model.Graph.Outputs.FirstOrDefault(o => o.Name == "logits") ?? model.Graph.Outputs.FirstOrDefault();
        if (logits?.Shape is { } shape && shape.Count > 0 && shape[^1].Value is long v and > 0 and <= int.MaxValue)
        {
            return (int)v;
        }

        Node? gather = model.Graph.Nodes.FirstOrDefault(n => n.Is("Gather") && n.Inputs[0]?.Initializer is { Dims.Count: 2 });
        return gather?.Inputs[0]!.Initializer!.Dims[0] is long rows and > 0 and <= int.MaxValue ? (int)rows : null;
    }
}
