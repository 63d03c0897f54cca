using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Generation;

/// <summary>What a decoder input carries; generation computes each kind from the running sequence.</summary>
internal enum DecoderInputKind
{
    /// <summary><c>input_ids</c> [batch, new tokens].</summary>
    InputIds,

    /// <summary><c>attention_mask</c> [batch, past + new]: all ones for one unpadded sequence.</summary>
    AttentionMask,

    /// <summary><c>position_ids</c> [batch, new tokens]: the absolute positions of the fed tokens.</summary>
    PositionIds,

    /// <summary>GroupQueryAttention's <c>seqlens_k</c> [batch] int32: total length − 1 (ORT's contrib op definition).</summary>
    SeqLensK,

    /// <summary>GroupQueryAttention's <c>total_sequence_length</c>: a scalar (or [1]) int32, past + new.</summary>
    TotalSequenceLength,

    /// <summary>A cache input (<c>past_key_values.N.key</c>, <c>past_N</c>, <c>past_conv.N</c>): fed back from its present output.</summary>
    Cache,
}

/// <summary>One input of the decoder as its graph declares it.</summary>
/// <param name="Name">Input name.</param>
/// <param name="Kind">What it carries.</param>
/// <param name="ElementType">Declared element type (int32 / int64 for ids, float / float16 / bfloat16 for caches).</param>
/// <param name="Rank">Declared rank (a scalar total_sequence_length has 0).</param>
/// <param name="InitialShape">For a cache: the shape of its value before any token (batch 1, past length 0, fixed dims kept).</param>
/// <param name="PresentName">For a cache: the output that holds its next value.</param>
internal sealed record DecoderInput(string Name, DecoderInputKind Kind, TensorElementType ElementType, int Rank, long[] InitialShape, string? PresentName)
{
    /// <summary>A cache's value before any token: empty along the past length, zeros for a fixed-size state.</summary>
    public OrtValue CreateInitialValue()
    {
        OrtValue value = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, ElementType, InitialShape);
        if (InitialShape.All(d => d > 0))
        {
            value.GetTensorMutableRawData().Clear();
        }

        return value;
    }
}

/// <summary>
/// Reads what a causal LM declares (ids int32 or int64, fp32/fp16/bf16 caches and logits, GQA's seqlens_k and
/// total_sequence_length, conv states) so generation feeds exactly that instead of assuming Optimum's fp32/int64 form.
/// </summary>
/// <remarks>
/// Cache inputs are recognised by name as ORT GenAI's model builder, Optimum and ORT's transformers optimizer name them
/// (<c>past_key_values.N.key</c> → <c>present.N.key</c>, <c>past_N</c> → <c>present_N</c>, <c>past_conv.N</c> →
/// <c>present_conv.N</c>). A symbolic cache dimension named like a batch is 1; any other symbolic one is the past length
/// and starts at 0, so a growing KV cache starts empty while a fixed-size state (a convolution window) starts as zeros.
/// </remarks>
internal sealed class DecoderSignature
{
    private DecoderSignature(IReadOnlyList<DecoderInput> inputs, string logits, TensorElementType logitsType)
    {
        Inputs = inputs;
        Logits = logits;
        LogitsType = logitsType;
    }

    /// <summary>Every input, in the session's order.</summary>
    public IReadOnlyList<DecoderInput> Inputs { get; }

    /// <summary>The logits output.</summary>
    public string Logits { get; }

    /// <summary>Element type of the logits (float, float16 or bfloat16).</summary>
    public TensorElementType LogitsType { get; }

    /// <summary>Cache inputs in input order.</summary>
    public IEnumerable<DecoderInput> Caches => Inputs.Where(i => i.Kind == DecoderInputKind.Cache);

    /// <summary>Classifies every input of <paramref name="session"/>.</summary>
    /// <exception cref="OnnxSerializationException">An input generation cannot feed, or a type it cannot produce; the message names it.</exception>
    public static DecoderSignature Read(InferenceSession session, string modelPath)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (!session.InputMetadata.ContainsKey("input_ids"))
        {
            string hint = session.InputMetadata.ContainsKey("inputs_embeds") ? " (it takes inputs_embeds: run its embedding model first; generate feeds token ids)" : "";
            throw new OnnxSerializationException($"Model '{modelPath}' has no input 'input_ids'{hint}.");
        }

        var inputs = new List<DecoderInput>();
        foreach ((string name, NodeMetadata meta) in session.InputMetadata)
        {
            DecoderInputKind kind = KindOf(name) ?? throw new OnnxSerializationException(
                $"Model '{modelPath}' has input '{name}', which generation cannot feed (it feeds input_ids, attention_mask, position_ids, seqlens_k, total_sequence_length and past*/present* caches).");
            TensorElementType type = meta.ElementDataType;
            if (kind == DecoderInputKind.Cache)
            {
                inputs.Add(CacheInput(session, modelPath, name, meta));
                continue;
            }

            bool int32Only = kind is DecoderInputKind.SeqLensK or DecoderInputKind.TotalSequenceLength;
            if (type is not (TensorElementType.Int32 or TensorElementType.Int64) || (int32Only && type != TensorElementType.Int32))
            {
                throw new OnnxSerializationException($"Model '{modelPath}' input '{name}' is {type}; generation feeds {(int32Only ? "int32" : "int32 or int64")}.");
            }

            inputs.Add(new DecoderInput(name, kind, type, meta.Dimensions.Length, [], null));
        }

        string logits = session.OutputMetadata.ContainsKey("logits") ? "logits" : session.OutputMetadata.Keys.First();
        TensorElementType logitsType = session.OutputMetadata[logits].ElementDataType;
        if (!IsFloat(logitsType))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' output '{logits}' is {logitsType}; generation reads float32, float16 or bfloat16 logits.");
        }

        return new DecoderSignature(inputs, logits, logitsType);
    }

    private static DecoderInputKind? KindOf(string name) => name switch
    {
        "input_ids" => DecoderInputKind.InputIds,
        "attention_mask" => DecoderInputKind.AttentionMask,
        "position_ids" => DecoderInputKind.PositionIds,
        "seqlens_k" => DecoderInputKind.SeqLensK,
        "total_sequence_length" => DecoderInputKind.TotalSequenceLength,
        _ when name.StartsWith("past", StringComparison.Ordinal) => DecoderInputKind.Cache,
        _ => null,
    };

    private static DecoderInput CacheInput(InferenceSession session, string modelPath, string name, NodeMetadata meta)
    {
        string present = name.StartsWith("past_key_values.", StringComparison.Ordinal)
            ? "present." + name["past_key_values.".Length..]
            : "present" + name["past".Length..];
        if (!session.OutputMetadata.ContainsKey(present))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' has cache input '{name}' but no output '{present}' to feed back.");
        }

        if (!IsFloat(meta.ElementDataType))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' cache input '{name}' is {meta.ElementDataType}; generation feeds float32, float16 or bfloat16 caches.");
        }

        int[] dims = meta.Dimensions;
        string[] symbols = meta.SymbolicDimensions;
        var shape = new long[dims.Length];
        for (int d = 0; d < dims.Length; d++)
        {
            bool symbolic = dims[d] < 0;
            string symbol = d < symbols.Length ? symbols[d] : "";
            shape[d] = !symbolic ? dims[d] : symbol.Contains("batch", StringComparison.OrdinalIgnoreCase) ? 1 : 0;
        }

        return new DecoderInput(name, DecoderInputKind.Cache, meta.ElementDataType, dims.Length, shape, present);
    }

    private static bool IsFloat(TensorElementType type) => type is TensorElementType.Float or TensorElementType.Float16 or TensorElementType.BFloat16;
}
