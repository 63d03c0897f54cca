using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>Sizes of the convolutional language model <see cref="ConvLmBuilder"/> builds.</summary>
public sealed record ConvLmConfig
{
    /// <summary>Vocabulary.</summary>
    public int Vocab { get; init; } = 256;

    /// <summary>Embedding width and Conv channels.</summary>
    public int Hidden { get; init; } = 16;

    /// <summary>Kernel width of both Conv1d layers (odd: the padding keeps the sequence length).</summary>
    public int Kernel { get; init; } = 3;

    /// <summary>Opset.</summary>
    public long Opset { get; init; } = 17;

    /// <summary>Seed of the random weights.</summary>
    public int Seed { get; init; } = 20261203;
}

/// <summary>
/// A small convolutional LM in torch.onnx's naming, for LoRA on Embedding and Conv: ids [batch, seq] → Gather
/// (<c>/model/embed_tokens/Gather</c>) masked by <c>attention_mask</c> → [batch, hidden, seq] → Conv1d (k, pad k/2) →
/// Relu → Conv1d (k, dilation 2, pad k−1) → [batch, seq, hidden] → lm_head MatMul → <c>logits</c> [batch, seq, vocab].
/// </summary>
public static class ConvLmBuilder
{
    /// <summary>Builds the model with seeded random weights.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive, or the kernel is even.</exception>
    public static Model Build(ConvLmConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(config.Vocab);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(config.Hidden);
        if (config.Kernel <= 0 || config.Kernel % 2 == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(config), config.Kernel, "The kernel must be odd and positive.");
        }

        var c = config;
        var random = new RandomWeightSource(c.Seed);
        var b = new GraphBuilder("main_graph", c.Opset);
        Value ids = b.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        Value mask = b.Input("attention_mask", DataType.Int64, "batch_size", "sequence_length");
        Value table = b.Weight(random, "model.embed_tokens.weight", new("model.embed_tokens.weight", WeightRole.Embedding, [c.Vocab, c.Hidden]));
        Value x = b.Node("/model/embed_tokens", "Gather", [table, ids]);
        Value keep = b.Node("/model", "Unsqueeze", [b.Node("/model", "Cast", [mask], [Attr.Int("to", (long)DataType.Float)]), b.Int64s("/model/axes", 2)]);
        x = b.Node("/model", "Transpose", [b.Node("/model", "Mul", [x, keep])], [Attr.Ints("perm", 0, 2, 1)]);
        x = b.Node("/model/act", "Relu", [Conv(b, random, x, "model.conv1", c, dilation: 1)]);
        x = Conv(b, random, x, "model.conv2", c, dilation: 2);
        x = b.Node("/model", "Transpose", [x], [Attr.Ints("perm", 0, 2, 1)]);
        Value head = b.Weight(random, "lm_head.weight", new("lm_head.weight", WeightRole.Linear, [c.Hidden, c.Vocab]));
        b.Output(b.Node("/lm_head", "MatMul", [x, head]), "logits", DataType.Float, "batch_size", "sequence_length", c.Vocab);
        return b.Model;
    }

    private static Value Conv(GraphBuilder b, IWeightSource random, Value x, string key, ConvLmConfig c, int dilation)
    {
        // Weights drawn as a [in·k, out] linear (fan-in scaled), stored as torch's Conv weight [out, in, k].
        float[] w = random.Floats(new WeightRequest(key + ".weight", WeightRole.Linear, [c.Hidden * c.Kernel, c.Hidden]));
        Value weight = b.Floats(key + ".weight", [c.Hidden, c.Hidden, c.Kernel], w);
        Value bias = b.Weight(random, key + ".bias", new(key + ".bias", WeightRole.Bias, [c.Hidden]));
        long pad = dilation * (c.Kernel - 1) / 2;
        return b.Node("/" + key.Replace('.', '/'), "Conv", [x, weight, bias], [Attr.Ints("kernel_shape", c.Kernel), Attr.Ints("pads", pad, pad), Attr.Ints("dilations", dilation), Attr.Ints("strides", 1)]);
    }
}
