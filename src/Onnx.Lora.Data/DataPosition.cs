namespace Onnx.Lora.Data;

/// <summary>Where the data loader stands: the next row to read is row <see cref="Index"/> of epoch <see cref="Epoch"/>'s order.</summary>
/// <param name="Epoch">Zero-based epoch.</param>
/// <param name="Index">Zero-based row index within that epoch's shuffled order.</param>
public sealed record DataPosition(int Epoch, int Index);
