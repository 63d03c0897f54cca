using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>
/// The row loop every task-specific JSONL reader shares: skip blank lines, refuse rows too long to be JSONL, parse each
/// row as a JSON object, collect every bad row (file:line and why) into one error, and refuse a file without examples.
/// </summary>
internal static class JsonlRows
{
    /// <summary>
    /// Calls <paramref name="read"/> on the root object of every non-blank row of <paramref name="path"/> and returns
    /// what it made; a <see cref="DataException"/> from it marks that row bad (all rows are still read).
    /// </summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="options">Row-size and error-listing limits.</param>
    /// <param name="expected">What a row must hold, for the "not an object" message (e.g. <c>"source" and "target"</c>).</param>
    /// <param name="read">Turns one row (its JSON object and its <c>file:line</c>) into an example.</param>
    /// <exception cref="DataException">The file is missing or empty, or rows are bad: each is listed as file:line with the reason.</exception>
    public static List<TokenizedExample> Read(string path, DatasetOptions options, string expected, Func<JsonElement, string, TokenizedExample> read)
    {
        if (!File.Exists(path))
        {
            throw new DataException($"Data file '{path}' does not exist.");
        }

        var examples = new List<TokenizedExample>();
        var errors = new BadRowReport(path, options.MaxReportedErrors);
        foreach ((int lineNumber, string? line) in BoundedLineReader.Read(path, options.MaxRowChars))
        {
            if (line is not null && string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            string where = $"{path}:{lineNumber}";
            try
            {
                if (line is null)
                {
                    throw new DataException($"{where}: the row is longer than {options.MaxRowChars:N0} characters (is this a JSONL file?)");
                }

                using JsonDocument doc = Parse(line, where);
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    throw new DataException($"{where}: expected a JSON object with {expected}");
                }

                examples.Add(read(doc.RootElement, where));
            }
            catch (InvalidOperationException e)
            {
                errors.Add(where, new DataException($"{where}: a field name or value is not valid text ({e.Message})"));
            }
            catch (DataException e)
            {
                errors.Add(where, e);
            }
        }

        errors.ThrowIfAny();
        return examples.Count > 0 ? examples : throw new DataException($"Data file '{path}' holds no examples (it is empty or only blank lines).");
    }

    /// <summary>The non-empty string field <paramref name="name"/> of <paramref name="row"/>.</summary>
    /// <exception cref="DataException">The field is missing, not a string, or empty.</exception>
    public static string RequiredText(JsonElement row, string name, string where)
    {
        string text = row.TryGetProperty(name, out JsonElement t) && t.ValueKind == JsonValueKind.String ? t.GetString()!
            : throw new DataException($"{where}: \"{name}\" is missing or not a string");
        return text.Length > 0 ? text : throw new DataException($"{where}: \"{name}\" is empty");
    }

    /// <summary>
    /// Appends the ids of <paramref name="text"/> as the tokenizer's own <c>tokenizer(text)</c> makes them: BOS and EOS
    /// where the tokenizer adds them.
    /// </summary>
    public static void EncodeWithSpecialTokens(TextTokenizer tokenizer, string text, List<int> ids)
    {
        if (tokenizer.AddBos && tokenizer.BosId is int bos)
        {
            ids.Add(bos);
        }

        tokenizer.Encode(text, ids);
        if (tokenizer.AddEos && tokenizer.EosId is int eos)
        {
            ids.Add(eos);
        }
    }

    /// <summary>Checks every id against the model's embedding.</summary>
    /// <exception cref="DataException">An id is outside the embedding.</exception>
    public static void CheckVocabulary(List<int> ids, int modelVocabSize, string where)
    {
        if (ids.FindIndex(id => id >= modelVocabSize) is int bad and >= 0)
        {
            throw new DataException($"{where}: token id {ids[bad]} is outside the model's embedding ({modelVocabSize} rows)");
        }
    }

    private static JsonDocument Parse(string line, string where)
    {
        try
        {
            return JsonDocument.Parse(line);
        }
        catch (JsonException e)
        {
            throw new DataException($"{where}: invalid JSON: {e.Message}");
        }
    }
}
