using Onnx.Lora.Graph;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Removes the KV cache from a decoder for training (a training step sees whole sequences, no past): present outputs
/// are dropped, and each past input is disconnected where it feeds an optional input of a fused attention op
/// (GroupQueryAttention, MultiHeadAttention, Attention take "no past" as an omitted input). A past input read any other
/// way (e.g. a torch-style Concat) is instead fed an empty tensor by the session, so it is kept.
/// </summary>
public static class KvCacheRemoval
{
    private static readonly HashSet<string> s_fusedAttention = ["GroupQueryAttention", "MultiHeadAttention", "Attention", "DecoderMaskedMultiHeadAttention"];

    /// <summary>True for names GenAI, Optimum and ORT's transformers tools give KV cache inputs.</summary>
    public static bool IsPastInput(string name) =>
        name.StartsWith("past_key_values", StringComparison.Ordinal) || name.StartsWith("past_", StringComparison.Ordinal) || name.StartsWith("past.", StringComparison.Ordinal);

    /// <summary>True for names of KV cache outputs.</summary>
    public static bool IsPresentOutput(string name) => name.StartsWith("present", StringComparison.Ordinal);

    /// <summary>Removes cache outputs and disconnects cache inputs.</summary>
    /// <returns>Names of the past inputs that stay (to be fed empty tensors).</returns>
    public static IReadOnlyList<string> Apply(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Onnx.Lora.Graph.Graph graph = model.Graph;
        graph.Outputs.RemoveAll(o => IsPresentOutput(o.Name));
        var kept = new List<string>();
        foreach (Value input in graph.Inputs.Where(i => IsPastInput(i.Name)).ToArray())
        {
            bool optionalOnly = input.Uses.All(u => u.Node.Domain == "com.microsoft" && s_fusedAttention.Contains(u.Node.OpType));
            if (optionalOnly)
            {
                foreach (Usage use in input.Uses.ToArray())
                {
                    use.Node.ReplaceInput(use.InputIndex, null);
                }

                graph.Inputs.Remove(input);
            }
            else
            {
                kept.Add(input.Name);
            }
        }

        return kept;
    }
}
