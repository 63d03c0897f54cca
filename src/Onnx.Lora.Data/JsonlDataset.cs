using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Onnx.Lora.Data;

/// <summary>How <see cref="JsonlDataset.Load(string, TextTokenizer, DatasetOptions)"/> turns rows into examples.</summary>
public sealed record DatasetOptions
{
    /// <summary>Mask prompt / non-assistant tokens (labels −100) for prompt-completion, alpaca and messages rows.</summary>
    public bool CompletionOnlyLoss { get; init; } = true;

    /// <summary>Longest example (tokens) allowed: the run's seq length, itself ≤ the model's max positions.</summary>
    public required int MaxTokens { get; init; }

    /// <summary>Cut over-long examples to <see cref="MaxTokens"/> instead of failing.</summary>
    public bool Truncate { get; init; }

    /// <summary>Keep over-long examples whole (packing splits them across rows); wins over <see cref="Truncate"/>.</summary>
    public bool KeepOverlong { get; init; }

    /// <summary>Rows of the model's embedding: every token id must be below it.</summary>
    public required int ModelVocabSize { get; init; }

    /// <summary>Chat template to use instead of the tokenizer's (null: the tokenizer's, else <see cref="ChatTemplate.DefaultTemplate"/>).</summary>
    public string? ChatTemplateOverride { get; init; }

    /// <summary>
    /// At most this many row errors are listed in one exception (all rows are still checked and counted): the CLI prints
    /// the message as one stderr line, which must stay readable (20 long rows made a 3 KB line).
    /// </summary>
    public int MaxReportedErrors { get; init; } = 3;

    /// <summary>Longest row (characters) read; a longer one is a bad row, never held in memory (16 Mi by default).</summary>
    public int MaxRowChars { get; init; } = 16 << 20;
}

/// <summary>
/// Reads a JSONL training file (one JSON object per line, blank lines skipped) in any of the
/// <see cref="ExampleFormat"/>s, tokenizes every row and validates ALL of them before returning, so a bad row
/// fails the run before training starts with "file:line: what is wrong".
/// </summary>
/// <remarks>
/// Alpaca rows are rendered with the Stanford Alpaca prompt ("Below is an instruction ... ### Response:\n") and
/// trained as prompt-completion. Text and prompt-completion rows get BOS when the tokenizer adds one and EOS
/// when it has one; chat rows get exactly what the template writes (HF's apply_chat_template does not add
/// special tokens either). A token carries loss when any of its chars lies in the completion / assistant span, so a
/// token straddling the boundary counts as completion.
/// </remarks>
public static class JsonlDataset
{
    private static readonly CompositeFormat s_alpacaWithInput = CompositeFormat.Parse(
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{0}\n\n### Input:\n{1}\n\n### Response:\n");

    private static readonly CompositeFormat s_alpacaNoInput = CompositeFormat.Parse(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{0}\n\n### Response:\n");

    /// <summary>Loads, tokenizes and validates every row of <paramref name="path"/>.</summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="tokenizer">The run's tokenizer.</param>
    /// <param name="options">Masking, length and vocabulary limits.</param>
    /// <exception cref="DataException">The file is missing or empty, the tokenizer does not fit the model, or rows are bad: the message lists each as file:line with the reason.</exception>
    public static List<TokenizedExample> Load(string path, TextTokenizer tokenizer, DatasetOptions options) => Load(path, tokenizer, options, out _);

    /// <summary>Loads, tokenizes and validates every row of <paramref name="path"/>, and counts the examples longer than <see cref="DatasetOptions.MaxTokens"/>.</summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="tokenizer">The run's tokenizer.</param>
    /// <param name="options">Masking, length and vocabulary limits.</param>
    /// <param name="overlongExamples">Examples longer than MaxTokens that were truncated or kept whole (refused ones are errors).</param>
    /// <exception cref="DataException">The file is missing or empty, the tokenizer does not fit the model, or rows are bad: the message lists each as file:line with the reason.</exception>
    public static List<TokenizedExample> Load(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples)
    {
        overlongExamples = 0;
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        VocabularyGuard.Check(tokenizer, options.ModelVocabSize);
        if (!File.Exists(path))
        {
            throw new DataException($"Data file '{path}' does not exist.");
        }

        ChatTemplate? template = null;
        var examples = new List<TokenizedExample>();
        var errors = new BadRowReport(path, options.MaxReportedErrors);
        int overlong = 0;
        var ids = new List<int>();
        var offsets = new List<int>();
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
                    throw new DataException($"{where}: the row is longer than {options.MaxRowChars:N0} characters (no training example is; is this a JSONL file?)");
                }

                TokenizedExample example = ParseRow(line, where, tokenizer, options, ids, offsets, ref template);
                if (example.InputIds.Length > options.MaxTokens)
                {
                    if (!options.Truncate && !options.KeepOverlong)
                    {
                        overlong++;
                        throw new DataException($"{where}: the example has {example.InputIds.Length} tokens, more than the sequence length {options.MaxTokens} (raise seq_length up to the model's limit, set truncate, or use packing)");
                    }

                    overlongExamples++;
                    if (!options.KeepOverlong)
                    {
                        example = example with { InputIds = example.InputIds[..options.MaxTokens], Labels = example.Labels[..options.MaxTokens] };
                    }
                }

                if (example.TrainableTokens == 0)
                {
                    throw new DataException($"{where}: no token carries loss (the completion or assistant reply is empty or was truncated away)");
                }

                examples.Add(example);
            }
            catch (DataException e)
            {
                overlong += e is TooManyCharsException ? 1 : 0;
                errors.Add(where, e);
            }
        }

        errors.ThrowIfAny(overlong > 0 ? $"{Environment.NewLine}{overlong} example(s) are longer than seq_length {options.MaxTokens}." : "");

        if (examples.Count == 0)
        {
            throw new DataException($"Data file '{path}' holds no examples (it is empty or only blank lines).");
        }

        return examples;
    }

    private static TokenizedExample ParseRow(string line, string where, TextTokenizer tokenizer, DatasetOptions options, List<int> ids, List<int> offsets, ref ChatTemplate? template)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(line);
        }
        catch (JsonException e)
        {
            throw new DataException($"{where}: invalid JSON: {e.Message}");
        }

        using (doc)
        {
            try
            {
                return ParseObject(doc.RootElement, where, tokenizer, options, ids, offsets, ref template);
            }
            catch (InvalidOperationException e)
            {
                // JsonDocument accepts an unpaired surrogate escape ("\ud800") in a name or value and fails only when
                // it is read (also by TryGetProperty, which compares names).
                throw new DataException($"{where}: a field name or value is not valid text ({e.Message})");
            }
        }
    }

    private static TokenizedExample ParseObject(JsonElement row, string where, TextTokenizer tokenizer, DatasetOptions options, List<int> ids, List<int> offsets, ref ChatTemplate? template)
    {
        {
            if (row.ValueKind != JsonValueKind.Object)
            {
                throw new DataException($"{where}: expected a JSON object, found {Kind(row)}");
            }

            if (row.TryGetProperty("messages", out JsonElement messages))
            {
                template ??= ChatTemplate.Parse(options.ChatTemplateOverride ?? tokenizer.ChatTemplate ?? ChatTemplate.DefaultTemplate);
                return FromMessages(messages, where, tokenizer, options, template, ids, offsets);
            }

            if (row.TryGetProperty("prompt", out _) || row.TryGetProperty("completion", out _))
            {
                string prompt = RequiredString(row, "prompt", where, allowEmpty: true);
                string completion = RequiredString(row, "completion", where, allowEmpty: false);
                return FromPromptCompletion(prompt, completion, where, tokenizer, options, ids, offsets);
            }

            if (row.TryGetProperty("instruction", out _) || row.TryGetProperty("output", out _))
            {
                string instruction = RequiredString(row, "instruction", where, allowEmpty: false);
                string output = RequiredString(row, "output", where, allowEmpty: false);
                string input = row.TryGetProperty("input", out _) ? RequiredString(row, "input", where, allowEmpty: true) : "";
                string prompt = input.Length > 0
                    ? string.Format(CultureInfo.InvariantCulture, s_alpacaWithInput, instruction, input)
                    : string.Format(CultureInfo.InvariantCulture, s_alpacaNoInput, instruction);
                return FromPromptCompletion(prompt, output, where, tokenizer, options, ids, offsets);
            }

            if (row.TryGetProperty("text", out _))
            {
                string text = RequiredString(row, "text", where, allowEmpty: false);
                return FromPromptCompletion("", text, where, tokenizer, options with { CompletionOnlyLoss = false }, ids, offsets);
            }

            string keys = string.Join(", ", row.EnumerateObject().Select(p => $"'{p.Name}'"));
            throw new DataException($"{where}: no known fields (found {(keys.Length == 0 ? "none" : keys)}); expected \"text\", \"prompt\"+\"completion\", \"messages\", or \"instruction\"+\"output\"");
        }
    }

    private static TokenizedExample FromPromptCompletion(string prompt, string completion, string where, TextTokenizer tokenizer, DatasetOptions options, List<int> ids, List<int> offsets)
    {
        ids.Clear();
        offsets.Clear();
        var inputIds = new List<int>();
        var labels = new List<int>();
        if (tokenizer.AddBos && tokenizer.BosId is int bos)
        {
            inputIds.Add(bos);
            labels.Add(options.CompletionOnlyLoss && prompt.Length > 0 ? TokenizedExample.IgnoreIndex : bos);
        }

        string text = prompt + completion;
        CheckLength(text, where, tokenizer, options);
        tokenizer.Encode(text, ids, offsets);
        int[] ends = TokenEnds(offsets, text.Length);
        for (int i = 0; i < ids.Count; i++)
        {
            inputIds.Add(ids[i]);
            bool isPrompt = ends[i] <= prompt.Length;
            labels.Add(options.CompletionOnlyLoss && isPrompt ? TokenizedExample.IgnoreIndex : ids[i]);
        }

        if (tokenizer.EosId is int eos)
        {
            inputIds.Add(eos);
            labels.Add(eos);
        }

        return Finish(inputIds, labels, where, options);
    }

    private static TokenizedExample FromMessages(JsonElement messages, string where, TextTokenizer tokenizer, DatasetOptions options, ChatTemplate template, List<int> ids, List<int> offsets)
    {
        if (messages.ValueKind != JsonValueKind.Array)
        {
            throw new DataException($"{where}: field 'messages' must be an array, found {Kind(messages)}");
        }

        var chat = new List<ChatMessage>();
        int index = 0;
        foreach (JsonElement m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object)
            {
                throw new DataException($"{where}: messages[{index}] must be an object with 'role' and 'content', found {Kind(m)}");
            }

            string role = RequiredString(m, "role", $"{where}: messages[{index}]", allowEmpty: false);
            string content = RequiredString(m, "content", $"{where}: messages[{index}]", allowEmpty: role != "assistant");
            chat.Add(new ChatMessage(role, content));
            index++;
        }

        if (chat.Count == 0)
        {
            throw new DataException($"{where}: field 'messages' is empty");
        }

        if (!chat.Any(c => c.Role == "assistant"))
        {
            throw new DataException($"{where}: no message has role 'assistant', so nothing would be learned");
        }

        RenderedChat rendered;
        try
        {
            rendered = template.Render(chat, tokenizer.BosToken, tokenizer.EosToken);
        }
        catch (DataException e)
        {
            throw new DataException($"{where}: {e.Message}");
        }

        ids.Clear();
        offsets.Clear();
        CheckLength(rendered.Text, where, tokenizer, options);
        tokenizer.Encode(rendered.Text, ids, offsets);
        var labels = new List<int>(ids.Count);
        int[] ends = TokenEnds(offsets, rendered.Text.Length);
        for (int i = 0; i < ids.Count; i++)
        {
            int start = offsets[i], end = ends[i];
            bool trainable = !options.CompletionOnlyLoss || rendered.TrainableSpans.Any(s => end > s.Start && start < s.End);
            labels.Add(trainable ? ids[i] : TokenizedExample.IgnoreIndex);
        }

        return Finish([.. ids], labels, where, options);
    }

    /// <summary>
    /// Refuses, before tokenizing, a text too long to fit <see cref="DatasetOptions.MaxTokens"/> whatever the tokenization:
    /// tokenizing costs ~150 bytes per char, so a 1 Mi-char row would allocate 150 MB only to be refused afterwards. A
    /// token covers at most <see cref="TextTokenizer.MaxTokenChars"/> chars of its vocabulary entry; the factor 4 leaves
    /// room for normalizers that compose characters (NFC / NFKC: a base letter and its combining marks become one).
    /// With truncation the whole text is tokenized (only the first MaxTokens ids are kept).
    /// </summary>
    private static void CheckLength(string text, string where, TextTokenizer tokenizer, DatasetOptions options)
    {
        long limit = 4L * options.MaxTokens * tokenizer.MaxTokenChars;
        if (!options.Truncate && !options.KeepOverlong && text.Length > limit)
        {
            throw new TooManyCharsException($"{where}: the example has {text.Length:N0} characters, more than the sequence length {options.MaxTokens} can hold (at most {limit:N0} for this tokenizer) (raise seq_length up to the model's limit, or set truncate)");
        }
    }

    /// <summary>A row refused by <see cref="CheckLength"/>: counted with the over-long rows in the summary.</summary>
    private sealed class TooManyCharsException(string message) : DataException(message);

    /// <summary>
    /// End of each token's chars: the next token's (strictly greater) start. A token's chars include the space a
    /// SentencePiece '▁' stands for, so "▁Hello" overlaps a span that starts at 'H'.
    /// </summary>
    private static int[] TokenEnds(List<int> starts, int textLength)
    {
        var ends = new int[starts.Count];
        int next = textLength;
        for (int i = starts.Count - 1; i >= 0; i--)
        {
            ends[i] = Math.Max(next, starts[i] + 1);
            if (i > 0 && starts[i] > starts[i - 1])
            {
                next = starts[i];
            }
        }

        return ends;
    }

    private static TokenizedExample Finish(List<int> inputIds, List<int> labels, string where, DatasetOptions options)
    {
        for (int i = 0; i < inputIds.Count; i++)
        {
            if (inputIds[i] < 0 || inputIds[i] >= options.ModelVocabSize)
            {
                throw new DataException($"{where}: token id {inputIds[i]} at position {i} is outside the model's vocabulary of {options.ModelVocabSize}");
            }
        }

        return new TokenizedExample([.. inputIds], [.. labels], where);
    }

    private static string RequiredString(JsonElement obj, string name, string where, bool allowEmpty)
    {
        if (!obj.TryGetProperty(name, out JsonElement v))
        {
            throw new DataException($"{where}: missing field '{name}'");
        }

        if (v.ValueKind != JsonValueKind.String)
        {
            throw new DataException($"{where}: field '{name}' must be a string, found {Kind(v)}");
        }

        string s;
        try
        {
            s = v.GetString()!;
        }
        catch (InvalidOperationException e)
        {
            // JsonDocument accepts an unpaired surrogate escape ("\ud800") and only fails when the string is read.
            throw new DataException($"{where}: field '{name}' is not valid text ({e.Message})");
        }

        if (!allowEmpty && s.Trim().Length == 0)
        {
            throw new DataException($"{where}: field '{name}' is empty");
        }

        return s;
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}

/// <summary>Up-front checks that the tokenizer and the data fit the model.</summary>
public static class VocabularyGuard
{
    /// <summary>
    /// Refuses a tokenizer whose vocabulary does not match the model's embedding: more ids than rows (ids would
    /// overflow), or far fewer (a different model's tokenizer). Embeddings padded past the vocabulary (to a
    /// multiple of 64 etc., as Phi-3 or Qwen do) are allowed up to max(512, 1% of rows) extra rows.
    /// </summary>
    /// <exception cref="DataException">The sizes do not match; the message gives both.</exception>
    public static void Check(TextTokenizer tokenizer, int embeddingRows)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(embeddingRows);
        int slack = Math.Max(512, embeddingRows / 100);
        if (tokenizer.VocabSize > embeddingRows || embeddingRows - tokenizer.VocabSize > slack)
        {
            throw new DataException(
                $"Tokenizer '{tokenizer.Source}' has {tokenizer.VocabSize} tokens but the model's embedding has {embeddingRows} rows: " +
                "this tokenizer does not belong to this model.");
        }
    }

    /// <summary>Refuses a sequence length beyond what the model supports.</summary>
    /// <exception cref="ConfigException">seq_length exceeds the model's maximum positions: an option value, not the data, is wrong.</exception>
    public static void CheckSequenceLength(int seqLength, int? modelMaxPositions, string modelName)
    {
        if (modelMaxPositions is int max && seqLength > max)
        {
            throw new ConfigException($"seq_length {seqLength} (--seq-length) is longer than model '{modelName}' supports ({max} positions).");
        }
    }
}
