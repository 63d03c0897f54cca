namespace Onnx.Lora.TorchRef;

/// <summary>One side of the parity and speed comparison: LoRA training of the same ONNX model on the same batches.</summary>
internal interface ITrainingPeer : IDisposable
{
    /// <summary>Name shown in reports.</summary>
    string Name { get; }

    /// <summary>Loss and the gradient of every trainable tensor (by tensor name) on <paramref name="batch"/>; parameters unchanged.</summary>
    (float Loss, Dictionary<string, float[]> Gradients) LossAndGradients(TokenBatch batch);

    /// <summary>One AdamW step on <paramref name="batch"/>; returns the loss before the update.</summary>
    float Step(TokenBatch batch);

    /// <summary>Current value of every trainable tensor, by name.</summary>
    Dictionary<string, float[]> Parameters();
}
