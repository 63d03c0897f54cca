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

    /// <summary>The model as given (an ONNX model, a llama2.c checkpoint, or an encoder-decoder export's folder).</summary>
    public string Path { get; }

    /// <summary>What the data checks and the memory estimate need.</summary>
    public ModelLimits Limits { get; }

    /// <summary>The loaded graph; null for a llama2.c checkpoint until <see cref="ModelPreparation.Prepare"/> converts it.</summary>
    public Model? Model { get; internal set; }

    /// <summary>
    /// The part chained in front of the model: the embedding part of a decoder that takes inputs_embeds
    /// (<see cref="EmbeddingChain"/>) or the encoder of an encoder-decoder (<see cref="EncoderDecoderChain"/>). The
    /// graph reads its tensors, so it lives as long as <see cref="Model"/>.
    /// </summary>
    internal Model? ChainedPart { get; init; }

    /// <summary>What <see cref="ChainedPart"/> is, for the run's messages (e.g. "its embedding model").</summary>
    internal string? ChainedPartNote { get; init; }

    /// <summary>Drops the loaded graph (a rank that trains on what rank 0 prepared does not keep it through training).</summary>
    public void Release()
    {
        Model?.Dispose();
        Model = null;
        ChainedPart?.Dispose();
    }

    /// <inheritdoc />
    public void Dispose() => Release();
}
