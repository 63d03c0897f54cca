using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>
/// Models split into parts (ORT GenAI's VLM/LLM folders: <c>embedding.onnx</c> makes <c>inputs_embeds</c> from token
/// ids, <c>text.onnx</c> turns them into logits) train as one graph: the embedding part named by the folder's
/// <c>genai_config.json</c> is chained in front of the decoder, so training feeds token ids as for any decoder and
/// the adapter's tensor names stay those of the decoder part.
/// </summary>
public static class EmbeddingChain
{
    private const string EmbedsInput = "inputs_embeds";
    private const long MaxConfigBytes = 16 << 20;

    /// <summary>
    /// When <paramref name="model"/> takes <c>inputs_embeds</c> and no <c>input_ids</c>, loads the embedding part
    /// that <c>genai_config.json</c> beside <paramref name="modelPath"/> names and chains it in front. Returns the
    /// embedding model, whose tensors the chained graph now reads (dispose it after <paramref name="model"/> is
    /// saved), or null when the model takes token ids itself.
    /// </summary>
    /// <exception cref="OnnxSerializationException">The model takes inputs_embeds and no embedding part is found, or
    /// the parts do not fit together; the message names the files.</exception>
    public static Model? AttachIfNeeded(Model model, string modelPath, Action<string>? report = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(modelPath);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        if (!graph.Inputs.Any(v => v.Name == EmbedsInput) || graph.Inputs.Any(v => v.Name == "input_ids"))
        {
            return null;
        }

        string folder = Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        string configPath = Path.Combine(folder, "genai_config.json");
        if (!File.Exists(configPath))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' takes {EmbedsInput}, not token ids, and no genai_config.json beside it names the embedding model that makes them; train the folder's decoder with its embedding model (ORT GenAI layout: model.embedding.filename).");
        }

        (string embeddingFile, string embedsName) = ReadEmbeddingPart(configPath, Path.GetFileName(modelPath));
        string embeddingPath = Path.Combine(folder, embeddingFile);
        if (!File.Exists(embeddingPath))
        {
            throw new OnnxSerializationException($"genai_config '{configPath}' names embedding model '{embeddingFile}', which does not exist.");
        }

        Model embedding = OnnxReader.Load(embeddingPath);
        try
        {
            if (embedsName != EmbedsInput)
            {
                Value? output = embedding.Graph.Outputs.FirstOrDefault(o => o.Name == embedsName)
                    ?? throw new OnnxSerializationException($"Embedding model '{embeddingPath}' has no output '{embedsName}' (genai_config '{configPath}', model.embedding.outputs.inputs_embeds).");
                output.Name = EmbedsInput;
            }

            IReadOnlyList<string> inputs = GraphChaining.Prepend(model, embedding, EmbedsInput, embeddingPath);
            if (!graph.Inputs.Any(v => v.Name == "input_ids"))
            {
                throw new OnnxSerializationException($"Embedding model '{embeddingPath}' does not take input_ids (it takes {string.Join(", ", inputs)}).");
            }

            RejectUnfedInputs(embeddingPath, inputs);
            report?.Invoke($"{Path.GetFileName(modelPath)} takes {EmbedsInput}: chained {embeddingFile} in front (token ids → {EmbedsInput})");
            return embedding;
        }
        catch (GraphValidationException e)
        {
            embedding.Dispose();
            throw new OnnxSerializationException($"Cannot chain embedding model '{embeddingPath}' in front of '{modelPath}': {e.Message}", e);
        }
        catch
        {
            embedding.Dispose();
            throw;
        }
    }

    // Text-only training has no image: an image input the embedding graph really reads cannot be fed, so it is named
    // up front rather than failing at the first step with ORT's "missing input".
    private static void RejectUnfedInputs(string embeddingPath, IReadOnlyList<string> inputs)
    {
        string[] unfed = inputs.Where(n => n is not ("input_ids" or "attention_mask" or "position_ids")).ToArray();
        if (unfed.Length > 0)
        {
            throw new OnnxSerializationException($"Embedding model '{embeddingPath}' reads {string.Join(", ", unfed)}, which text-only training cannot feed.");
        }
    }

    private static (string File, string EmbedsName) ReadEmbeddingPart(string configPath, string decoderFile)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(InputFile.ReadAllBytes(configPath, "genai_config", MaxConfigBytes, m => new OnnxSerializationException(m)));
            JsonElement modelSection = doc.RootElement.TryGetProperty("model", out JsonElement m) ? m : default;
            if (modelSection.ValueKind != JsonValueKind.Object || !modelSection.TryGetProperty("embedding", out JsonElement embedding)
                || !embedding.TryGetProperty("filename", out JsonElement file) || file.ValueKind != JsonValueKind.String)
            {
                throw new OnnxSerializationException($"genai_config '{configPath}' has no model.embedding.filename, so nothing makes the decoder's {EmbedsInput}.");
            }

            if (modelSection.TryGetProperty("decoder", out JsonElement decoder) && decoder.TryGetProperty("filename", out JsonElement decoderName)
                && decoderName.ValueKind == JsonValueKind.String && decoderName.GetString() != decoderFile)
            {
                throw new OnnxSerializationException($"genai_config '{configPath}' names '{decoderName.GetString()}' as the decoder, not '{decoderFile}'.");
            }

            string embedsName = embedding.TryGetProperty("outputs", out JsonElement outputs) && outputs.TryGetProperty(EmbedsInput, out JsonElement n)
                && n.ValueKind == JsonValueKind.String ? n.GetString()! : EmbedsInput;
            string name = file.GetString()!;
            if (name.Length == 0 || Path.GetFileName(name) != name)
            {
                throw new OnnxSerializationException($"genai_config '{configPath}': model.embedding.filename '{name}' must be a file name in the same folder.");
            }

            return (name, embedsName);
        }
        catch (JsonException e)
        {
            throw new OnnxSerializationException($"Cannot read genai_config '{configPath}': {e.Message}", e);
        }
    }
}
