namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>A named float32 tensor held in memory (a trainable parameter or an optimizer moment).</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="Shape">Dimensions; their product equals <paramref name="Data"/>'s length.</param>
/// <param name="Data">Row-major values.</param>
public sealed record NamedTensor(string Name, long[] Shape, float[] Data)
{
    /// <summary>Product of the dimensions.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}
