using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>
/// The model a run trains, read once (<see cref="ModelPreparation.Open"/>): its limits for the data checks, and the
/// loaded graph that <see cref="ModelPreparation.Prepare"/> injects and builds the training graphs from, and that the
/// trained model is finally written from. Owns the graph; dispose it when the run ends.
/// </summary>
public sealed class ModelSource : IDisposable
{
    internal ModelSource(string path, Model? model, ModelLimits limits)
    {
        Path = path;
        Model = model;
        Limits = limits;
    }

    /// <summary>The model file as given (an ONNX model or a llama2.c checkpoint).</summary>
    public string Path { get; }

    /// <summary>What the data checks and the memory estimate need.</summary>
    public ModelLimits Limits { get; }

    /// <summary>The loaded graph; null for a llama2.c checkpoint until <see cref="ModelPreparation.Prepare"/> converts it.</summary>
    public Model? Model { get; internal set; }

    /// <summary>
    /// The embedding part chained in front of a decoder that takes inputs_embeds (<see cref="EmbeddingChain"/>): the
    /// graph reads its tensors, so it lives as long as <see cref="Model"/>.
    /// </summary>
    internal Model? ChainedEmbedding { get; init; }

    /// <summary>Drops the loaded graph (a rank that trains on what rank 0 prepared does not keep it through training).</summary>
    public void Release()
    {
        Model?.Dispose();
        Model = null;
        ChainedEmbedding?.Dispose();
    }

    /// <inheritdoc />
    public void Dispose() => Release();
}
