using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// Removes the KV cache from a decoder for training (a training step sees whole sequences, no past): present outputs
/// are dropped, and each past input is disconnected where it feeds an optional input of a fused attention op
/// (GroupQueryAttention, MultiHeadAttention, Attention take "no past" as an omitted input) or feeds a torch-style
/// <c>Concat(past, new)</c>: with an empty past that Concat is the new keys/values, so its readers read them directly
/// and the Concat goes. A past input still read some other way (e.g. Shape ops computing the past length) is fed an
/// empty tensor by the session, so it is kept.
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
        Onnx.Lora.Ir.Graph graph = model.Graph;
        graph.Outputs.RemoveAll(o => IsPresentOutput(o.Name));
        var kept = new List<string>();
        foreach (Value input in graph.Inputs.Where(i => IsPastInput(i.Name)).ToArray())
        {
            // The fused attention ops take "no past" as an omitted input: disconnect those uses. Readers left after
            // the Concat bypass below (Shape ops computing the past length for a mask) keep the input, fed empty.
            foreach (Usage use in input.Uses.Where(u => u.Node.Domain == "com.microsoft" && s_fusedAttention.Contains(u.Node.OpType)).ToArray())
            {
                use.Node.ReplaceInput(use.InputIndex, null);
            }

            // Concat(empty past, new) ≡ new: bypassing it keeps the training graph (and its speed) as without a cache.
            foreach (Usage use in input.Uses.Where(u => u.Node.Is("Concat") && u.Node.Inputs.Count == 2 && !u.Node.Outputs[0].IsGraphOutput).ToArray())
            {
                Value fresh = use.Node.Inputs[1 - use.InputIndex]!;
                use.Node.Outputs[0].ReplaceAllUsesWith(fresh);
                graph.Remove(use.Node);
            }

            if (input.Uses.Count == 0)
            {
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
