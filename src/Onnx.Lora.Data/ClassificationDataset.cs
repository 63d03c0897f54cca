using System.Globalization;
using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>The label side of a sequence-classification dataset: how many classes the model's head has, and their names.</summary>
/// <param name="ClassCount">Classes of the model's head (the last axis of its logits [batch, classes]).</param>
/// <param name="LabelIds">Label names to class ids (Hugging Face's <c>label2id</c>), empty when only integer labels are allowed.</param>
/// <param name="NamesSource">Where the names came from (a config.json path), for messages; null without names.</param>
public sealed record ClassLabels(int ClassCount, IReadOnlyDictionary<string, int> LabelIds, string? NamesSource)
{
    /// <summary>
    /// Reads <c>label2id</c> (else <c>id2label</c> inverted) from the Hugging Face <c>config.json</c> beside
    /// <paramref name="modelPath"/>, as Optimum exports it; no such file gives integer labels only.
    /// </summary>
    /// <exception cref="DataException">The config exists but is not valid JSON, or names an id outside [0, classCount).</exception>
    public static ClassLabels ForModel(string modelPath, int classCount)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        string config = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? ".", "config.json");
        if (!File.Exists(config))
        {
            return new ClassLabels(classCount, new Dictionary<string, int>(), null);
        }

        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        try
        {
            using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(config));
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("label2id", out JsonElement l2i) && l2i.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty p in l2i.EnumerateObject())
                {
                    ids[p.Name] = p.Value.TryGetInt32(out int id) ? id : throw new DataException($"{config}: label2id['{p.Name}'] is not an integer.");
                }
            }
            else if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("id2label", out JsonElement i2l) && i2l.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty p in i2l.EnumerateObject())
                {
                    ids[p.Value.GetString() ?? ""] = int.TryParse(p.Name, NumberStyles.None, CultureInfo.InvariantCulture, out int id) ? id
                        : throw new DataException($"{config}: id2label key '{p.Name}' is not an integer.");
                }
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new DataException($"{config}: not a valid Hugging Face config ({e.Message}).", e);
        }

        foreach ((string name, int id) in ids)
        {
            if (id < 0 || id >= classCount)
            {
                throw new DataException($"{config}: label '{name}' has id {id}, but the model's head has {classCount} classes (ids 0..{classCount - 1}).");
            }
        }

        return new ClassLabels(classCount, ids, ids.Count == 0 ? null : config);
    }
}

/// <summary>
/// Reads a sequence-classification JSONL file: one <c>{"text": ..., "label": ...}</c> object per line, the label an
/// integer class id or a label name from the model's <c>label2id</c>. Every row is tokenized and validated before
/// anything trains; bad rows are reported as "file:line: what is wrong".
/// </summary>
/// <remarks>
/// NOTE: an example is returned in the trainer's row layout so that the loader, shuffling, sharding and resume work
/// unchanged: <c>Labels[0]</c> holds the class id and every other position −100. The classification loss reads that
/// column (the trainer's SequenceClassificationLoss.LabelColumn). Text is encoded as the tokenizer's own
/// <c>tokenizer(text)</c> does: BOS ([CLS] for BERT-style tokenizers) and EOS ([SEP]) when the tokenizer adds them.
/// </remarks>
public static class ClassificationDataset
{
    /// <summary>Loads, tokenizes and validates every row of <paramref name="path"/>.</summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="tokenizer">The run's tokenizer.</param>
    /// <param name="options">Length and vocabulary limits (masking options do not apply).</param>
    /// <param name="labels">The model's classes and label names.</param>
    /// <param name="overlongExamples">Examples longer than the sequence length that were truncated.</param>
    /// <exception cref="DataException">The file is missing or empty, or rows are bad: each is listed as file:line with the reason.</exception>
    public static List<TokenizedExample> Load(string path, TextTokenizer tokenizer, DatasetOptions options, ClassLabels labels, out int overlongExamples)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(labels);
        VocabularyGuard.Check(tokenizer, options.ModelVocabSize);
        var ids = new List<int>();
        int overlong = 0;
        List<TokenizedExample> examples = JsonlRows.Read(path, options, "\"text\" and \"label\"", (row, where) =>
        {
            string text = JsonlRows.RequiredText(row, "text", where);
            if (!row.TryGetProperty("label", out JsonElement l) || l.ValueKind == JsonValueKind.Null)
            {
                throw new DataException($"{where}: \"label\" is missing (expected a class id 0..{labels.ClassCount - 1}{NamesHint(labels)})");
            }

            int label = LabelOf(l, where, labels);
            ids.Clear();
            JsonlRows.EncodeWithSpecialTokens(tokenizer, text, ids);
            if (ids.Count > options.MaxTokens)
            {
                if (!options.Truncate)
                {
                    throw new DataException($"{where}: the example has {ids.Count} tokens, more than the sequence length {options.MaxTokens} (raise seq_length up to the model's limit, or set truncate)");
                }

                overlong++;
                ids.RemoveRange(options.MaxTokens, ids.Count - options.MaxTokens);
            }

            JsonlRows.CheckVocabulary(ids, options.ModelVocabSize, where);
            int[] rowLabels = new int[ids.Count];
            Array.Fill(rowLabels, TokenizedExample.IgnoreIndex);
            rowLabels[0] = label;
            return new TokenizedExample([.. ids], rowLabels, where);
        });
        overlongExamples = overlong;
        return examples;
    }

    private static int LabelOf(JsonElement label, string where, ClassLabels labels)
    {
        if (label.ValueKind == JsonValueKind.Number)
        {
            return label.TryGetInt32(out int id) && id >= 0 && id < labels.ClassCount ? id
                : throw new DataException($"{where}: label {label.GetRawText()} is out of range: the model's head has {labels.ClassCount} classes (ids 0..{labels.ClassCount - 1})");
        }

        if (label.ValueKind == JsonValueKind.String)
        {
            string name = label.GetString()!;
            if (labels.LabelIds.TryGetValue(name, out int id))
            {
                return id;
            }

            return labels.NamesSource is null
                ? throw new DataException($"{where}: label \"{name}\" is a name, but there is no config.json with label2id beside the model; use class ids 0..{labels.ClassCount - 1}")
                : throw new DataException($"{where}: label \"{name}\" is not in label2id of {labels.NamesSource}{NamesHint(labels)}");
        }

        throw new DataException($"{where}: \"label\" must be a class id or a label name, not {label.ValueKind.ToString().ToLowerInvariant()}");
    }

    private static string NamesHint(ClassLabels labels) =>
        labels.LabelIds.Count == 0 ? "" : " or one of " + string.Join(", ", labels.LabelIds.OrderBy(p => p.Value).Take(8).Select(p => $"\"{p.Key}\""));
}
