namespace Onnx.Lora.Data;

/// <summary>
/// Reads an encoder-decoder (sequence-to-sequence) JSONL file: one <c>{"source": ..., "target": ...}</c> object per
/// line (translation, summarization, rewriting). Every row is tokenized and validated before anything trains; bad rows
/// are reported as "file:line: what is wrong".
/// </summary>
/// <remarks>
/// NOTE: an example is returned in the trainer's row layout so that the loader, shuffling, sharding and resume work
/// unchanged: <c>InputIds</c> holds the source (the encoder's input_ids) and <c>Labels</c> the target, both padded to
/// the longer of the two (source padding has attention 0 through <see cref="TokenizedExample.AttendedTokens"/>,
/// target padding is −100). Both are encoded as Hugging Face's <c>tokenizer(source, text_target=target)</c> does: the
/// tokenizer's BOS/EOS around each; a target always ends in EOS (appended when the tokenizer does not add it, as
/// seq2seq tokenizers do), so the decoder learns where to stop. The labels are not shifted: the decoder reads them shifted right behind its
/// start token (teacher forcing, done in the training graph), and position t's logits predict label t.
/// </remarks>
public static class Seq2SeqDataset
{
    /// <summary>Loads, tokenizes and validates every row of <paramref name="path"/>.</summary>
    /// <param name="path">The JSONL file.</param>
    /// <param name="tokenizer">The run's tokenizer (the same for source and target, as for BART, T5 and Marian exports).</param>
    /// <param name="options">Length and vocabulary limits: MaxTokens bounds the source and the target each.</param>
    /// <param name="overlongExamples">Examples whose source or target was longer than MaxTokens and was truncated.</param>
    /// <exception cref="DataException">The file is missing or empty, or rows are bad: each is listed as file:line with the reason.</exception>
    public static List<TokenizedExample> Load(string path, TextTokenizer tokenizer, DatasetOptions options, out int overlongExamples)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        VocabularyGuard.Check(tokenizer, options.ModelVocabSize);
        var source = new List<int>();
        var target = new List<int>();
        int overlong = 0;
        List<TokenizedExample> examples = JsonlRows.Read(path, options, "\"source\" and \"target\"", (row, where) =>
        {
            string sourceText = JsonlRows.RequiredText(row, "source", where);
            string targetText = JsonlRows.RequiredText(row, "target", where);
            source.Clear();
            target.Clear();
            JsonlRows.EncodeWithSpecialTokens(tokenizer, sourceText, source);
            JsonlRows.EncodeWithSpecialTokens(tokenizer, targetText, target);
            if (!tokenizer.AddEos && tokenizer.EosId is int eos)
            {
                target.Add(eos); // The decoder learns where the target ends (generation stops at EOS).
            }

            bool cut = Fit(source, tokenizer, options, "source", where) | Fit(target, tokenizer, options, "target", where);
            overlong += cut ? 1 : 0;
            JsonlRows.CheckVocabulary(source, options.ModelVocabSize, where);
            JsonlRows.CheckVocabulary(target, options.ModelVocabSize, where);
            int length = Math.Max(source.Count, target.Count);
            int[] ids = new int[length];
            Array.Fill(ids, tokenizer.PadId);
            source.CopyTo(ids);
            int[] labels = new int[length];
            Array.Fill(labels, TokenizedExample.IgnoreIndex);
            target.CopyTo(labels);
            return new TokenizedExample(ids, labels, where) { AttendedTokens = source.Count };
        });
        overlongExamples = overlong;
        return examples;
    }

    // Truncation as Hugging Face's tokenizer(truncation=True) does it: the text is cut, a closing EOS kept.
    private static bool Fit(List<int> ids, TextTokenizer tokenizer, DatasetOptions options, string field, string where)
    {
        if (ids.Count <= options.MaxTokens)
        {
            return false;
        }

        if (!options.Truncate)
        {
            throw new DataException($"{where}: the {field} has {ids.Count} tokens, more than the sequence length {options.MaxTokens} (raise seq_length up to the model's limit, or set truncate)");
        }

        bool keepEos = tokenizer.EosId is int eos && ids[^1] == eos;
        int last = ids[^1];
        ids.RemoveRange(options.MaxTokens, ids.Count - options.MaxTokens);
        if (keepEos)
        {
            ids[^1] = last;
        }

        return true;
    }
}
