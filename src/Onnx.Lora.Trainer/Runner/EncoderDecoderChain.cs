using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>The token ids teacher forcing needs, from the export's config.json.</summary>
/// <param name="DecoderStart">The decoder's first input token (<c>decoder_start_token_id</c>).</param>
/// <param name="Pad">The id the decoder reads where a label is −100 (<c>pad_token_id</c>).</param>
public sealed record DecoderTokens(long DecoderStart, long Pad);

/// <summary>
/// Encoder-decoder exports (Optimum's <c>encoder_model.onnx</c> + <c>decoder_model.onnx</c> of BART, T5, Marian,
/// mBART, …) train as one graph: the encoder is chained in front of the decoder, its <c>last_hidden_state</c> feeding
/// the decoder's <c>encoder_hidden_states</c>, one <c>attention_mask</c> serving the encoder and the cross-attention,
/// and the decoder's token input renamed <c>decoder_input_ids</c> (computed from the labels by the loss). Gradients
/// reach both parts, so one adapter holds the LoRA of both, under PEFT's names.
/// </summary>
/// <remarks>
/// NOTE: Optimum exports the encoder as the model's encoder module alone, so its node names lack the scope PEFT names
/// its modules with (<c>/layers.0/self_attn/q_proj/MatMul</c> for BART's <c>model.encoder.layers.0.self_attn.q_proj</c>,
/// <c>/block.0/…</c> for T5's <c>encoder.block.0…</c>). The encoder's scope is taken from the decoder's
/// (<c>/model/decoder/…</c> → <c>/model/encoder</c>) and put in front of the encoder's node names.
/// </remarks>
public static class EncoderDecoderChain
{
    /// <summary>Optimum's file name of the encoder.</summary>
    public const string EncoderFile = "encoder_model.onnx";

    /// <summary>Optimum's file name of the decoder without past.</summary>
    public const string DecoderFile = "decoder_model.onnx";

    /// <summary>
    /// Optimum's file name of the decoder with and without past in one graph (an If on use_cache_branch); read when
    /// <see cref="DecoderFile"/> is not there, with its branch without past taken.
    /// </summary>
    public const string MergedDecoderFile = "decoder_model_merged.onnx";

    private const string HiddenStates = "encoder_hidden_states";
    private const long MaxConfigBytes = 16 << 20;

    /// <summary>
    /// The encoder and decoder files of the export <paramref name="modelPath"/> names: its folder, or either part's file.
    /// </summary>
    /// <exception cref="FileNotFoundException">No encoder/decoder pair is there; the message names what was looked for.</exception>
    public static (string Encoder, string Decoder) FindParts(string modelPath)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        string folder = Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        string encoder = Path.Combine(folder, EncoderFile);
        string decoder = Path.Combine(folder, DecoderFile);
        if (!File.Exists(decoder) && File.Exists(Path.Combine(folder, MergedDecoderFile)))
        {
            decoder = Path.Combine(folder, MergedDecoderFile);
        }

        if (!File.Exists(encoder) || !File.Exists(decoder))
        {
            throw new FileNotFoundException($"Model '{modelPath}': --task seq2seq-lm needs an encoder-decoder export with {EncoderFile} and {DecoderFile} (or {MergedDecoderFile}) in one folder (as Optimum writes them).", File.Exists(encoder) ? decoder : encoder);
        }

        return (encoder, decoder);
    }

    /// <summary>
    /// Loads both parts of the export at <paramref name="modelPath"/> and joins them into the decoder's graph. Returns
    /// the joined model and the encoder model, whose tensors the joined graph reads (dispose it after the joined model).
    /// </summary>
    /// <exception cref="OnnxSerializationException">A part is missing or does not have the inputs/outputs of an
    /// encoder-decoder export; the message names the file.</exception>
    public static (Model Joined, Model Encoder) Load(string modelPath)
    {
        (string encoderPath, string decoderPath) = FindParts(modelPath);
        Model decoder = OnnxReader.Load(decoderPath);
        Model? encoder = null;
        try
        {
            WithoutCacheBranch(decoder, decoderPath);
            encoder = OnnxReader.Load(encoderPath);
            Join(decoder, encoder, decoderPath, encoderPath);
            return (decoder, encoder);
        }
        catch
        {
            encoder?.Dispose();
            decoder.Dispose();
            throw;
        }
    }

    /// <summary>Chains <paramref name="encoder"/> in front of <paramref name="decoder"/> (changed in place).</summary>
    /// <exception cref="OnnxSerializationException">The parts do not fit together; the message names the file.</exception>
    public static void Join(Model decoder, Model encoder, string decoderLabel, string encoderLabel)
    {
        ArgumentNullException.ThrowIfNull(decoder);
        ArgumentNullException.ThrowIfNull(encoder);
        Graph d = decoder.Graph;
        Graph e = encoder.Graph;
        Value decoderIds = d.Inputs.FirstOrDefault(v => v.Name == "input_ids")
            ?? throw new OnnxSerializationException($"Decoder '{decoderLabel}' has no input_ids input (inputs: {string.Join(", ", d.Inputs.Select(v => v.Name))}).");
        if (!d.Inputs.Any(v => v.Name == HiddenStates))
        {
            throw new OnnxSerializationException($"Decoder '{decoderLabel}' has no {HiddenStates} input: it is not the decoder of an encoder-decoder export.");
        }

        if (d.Inputs.Any(v => v.Name is "attention_mask" or Loss.Seq2SeqLmLoss.DecoderInputIds))
        {
            throw new OnnxSerializationException($"Decoder '{decoderLabel}' already has an attention_mask or decoder_input_ids input; expected Optimum's decoder (input_ids, encoder_attention_mask, encoder_hidden_states).");
        }

        if (!e.Inputs.Any(v => v.Name == "input_ids"))
        {
            throw new OnnxSerializationException($"Encoder '{encoderLabel}' has no input_ids input (inputs: {string.Join(", ", e.Inputs.Select(v => v.Name))}).");
        }

        Value states = e.Outputs.FirstOrDefault(v => v.Name == "last_hidden_state") ?? (e.Outputs.Count == 1 ? e.Outputs[0]
            : throw new OnnxSerializationException($"Encoder '{encoderLabel}' has no last_hidden_state output (outputs: {string.Join(", ", e.Outputs.Select(v => v.Name))})."));
        states.Name = HiddenStates;
        decoderIds.Name = Loss.Seq2SeqLmLoss.DecoderInputIds;
        if (d.Inputs.FirstOrDefault(v => v.Name == "encoder_attention_mask") is { } crossMask)
        {
            crossMask.Name = "attention_mask"; // One mask: the encoder's padding is what the cross-attention must skip.
        }

        ScopeEncoderNodes(d, e);
        try
        {
            GraphChaining.Prepend(decoder, encoder, HiddenStates, encoderLabel, shareEqualInitializers: true);
        }
        catch (GraphValidationException ex)
        {
            throw new OnnxSerializationException($"Cannot chain encoder '{encoderLabel}' in front of decoder '{decoderLabel}': {ex.Message}", ex);
        }
    }

    /// <summary>
    /// The decoder start and pad ids from the export's <c>config.json</c> (else <c>generation_config.json</c>).
    /// </summary>
    /// <exception cref="OnnxSerializationException">Neither file gives both ids; the message names the files and keys.</exception>
    public static DecoderTokens ReadDecoderTokens(string modelPath)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        string folder = Directory.Exists(modelPath) ? modelPath : Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        long? start = null;
        long? pad = null;
        foreach (string name in new[] { "config.json", "generation_config.json" })
        {
            string path = Path.Combine(folder, name);
            if (!File.Exists(path))
            {
                continue;
            }

            try
            {
                using JsonDocument doc = JsonDocument.Parse(InputFile.ReadAllBytes(path, "model config", MaxConfigBytes, m => new OnnxSerializationException(m)));
                start ??= Id(doc.RootElement, "decoder_start_token_id");
                pad ??= Id(doc.RootElement, "pad_token_id");
            }
            catch (JsonException ex)
            {
                throw new OnnxSerializationException($"Cannot read '{path}': {ex.Message}", ex);
            }
        }

        return start is long s && pad is long p ? new DecoderTokens(s, p)
            : throw new OnnxSerializationException($"Model '{modelPath}': teacher forcing needs decoder_start_token_id and pad_token_id, and config.json / generation_config.json in {folder} do not give {(start is null ? "decoder_start_token_id" : "pad_token_id")} (Optimum copies the model's config.json beside the export).");
    }

    /// <summary>
    /// A merged decoder (with and without past behind <c>If(use_cache_branch)</c>) becomes the decoder without past: a
    /// training step sees whole sequences. The past inputs only the other branch read go with it.
    /// </summary>
    private static void WithoutCacheBranch(Model decoder, string decoderLabel)
    {
        try
        {
            if (IfBranchInlining.Inline(decoder, "use_cache_branch", value: false) == 0)
            {
                return;
            }
        }
        catch (GraphValidationException ex)
        {
            throw new OnnxSerializationException($"Decoder '{decoderLabel}': cannot take its branch without past: {ex.Message}", ex);
        }

        foreach (Value unread in decoder.Graph.Inputs.Where(v => v.Name.StartsWith("past_key_values", StringComparison.Ordinal) && v.Uses.Count == 0).ToArray())
        {
            decoder.Graph.Inputs.Remove(unread);
        }
    }

    private static long? Id(JsonElement root, string key) =>
        root.ValueKind == JsonValueKind.Object && root.TryGetProperty(key, out JsonElement v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long id) && id >= 0 ? id : null;

    private static void ScopeEncoderNodes(Graph decoder, Graph encoder)
    {
        // "/model/decoder/layers.0/…" → the encoder lives at "/model/encoder"; "/decoder/block.0/…" → "/encoder".
        string? decoderScope = decoder.Nodes.Select(n => n.Name).FirstOrDefault(n => n.StartsWith('/') && n.Contains("/decoder/", StringComparison.Ordinal));
        if (decoderScope is null || encoder.Nodes.Any(n => n.Name.Contains("/encoder/", StringComparison.Ordinal)))
        {
            return;
        }

        string scope = decoderScope[..decoderScope.IndexOf("/decoder/", StringComparison.Ordinal)] + "/encoder";
        foreach (Node node in encoder.Nodes.Where(n => n.Name.StartsWith('/')))
        {
            node.Name = scope + node.Name;
        }
    }
}
