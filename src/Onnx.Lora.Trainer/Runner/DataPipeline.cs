using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>Everything the training loop reads: tokenizer and loaders, all rows already validated.</summary>
/// <param name="Tokenizer">The run's tokenizer.</param>
/// <param name="Train">Training loader (shuffled per epoch with the run's seed).</param>
/// <param name="Eval">Evaluation loader (fixed order), or null without eval data.</param>
/// <param name="TrainExamples">Examples in the training file.</param>
/// <param name="TrainTargetTokens">Tokens carrying loss in one training epoch.</param>
public sealed record PreparedData(TextTokenizer Tokenizer, DataLoader Train, DataLoader? Eval, int TrainExamples, long TrainTargetTokens)
{
    /// <summary>Training examples longer than seq_length (truncated, or split across rows with packing).</summary>
    public int TrainOverlong { get; init; }

    /// <summary>Eval examples longer than seq_length (truncated, or split with packing).</summary>
    public int EvalOverlong { get; init; }

    /// <summary>Split (packing) rather than truncated.</summary>
    public bool OverlongSplit { get; init; }

    /// <summary>The line the run prints at its start about over-long examples, or null when there were none.</summary>
    public string? OverlongNote(int seqLength) => TrainOverlong + EvalOverlong == 0 ? null
        : $"{TrainOverlong} training and {EvalOverlong} eval example(s) are longer than seq_length {seqLength}: {(OverlongSplit ? "split across packed rows" : "truncated to seq_length (truncate: false refuses them)")}";
}

/// <summary>Builds <see cref="PreparedData"/> from <see cref="TrainOptions"/>: the one call the runner makes before training.</summary>
public static class DataPipeline
{
    /// <summary>
    /// Loads the tokenizer, checks it and the seq length against the model, reads and validates every row of
    /// the training and eval files, packs or not, and creates the loaders.
    /// </summary>
    /// <param name="options">Validated options.</param>
    /// <param name="modelVocabSize">Rows of the model's token embedding.</param>
    /// <param name="modelMaxPositions">Longest sequence the model supports, if it has a limit.</param>
    /// <param name="modelName">Model name for messages.</param>
    /// <exception cref="DataException">Tokenizer, data or limits do not fit; the message says where and why.</exception>
    public static PreparedData Prepare(TrainOptions options, int modelVocabSize, int? modelMaxPositions, string modelName)
    {
        ArgumentNullException.ThrowIfNull(options);
        VocabularyGuard.CheckSequenceLength(options.SeqLength, modelMaxPositions, modelName);
        TextTokenizer tokenizer = TextTokenizer.Load(options.Tokenizer);
        var datasetOptions = new DatasetOptions
        {
            CompletionOnlyLoss = options.CompletionOnlyLoss,
            MaxTokens = options.SeqLength,
            Truncate = options.Truncate,
            KeepOverlong = options.Packing,
            ModelVocabSize = modelVocabSize,
        };
        List<TokenizedExample> train = JsonlDataset.Load(options.Data, tokenizer, datasetOptions, out int trainOverlong);
        int evalOverlong = 0;
        List<TokenizedExample>? eval = options.EvalData is null ? null : JsonlDataset.Load(options.EvalData, tokenizer, datasetOptions, out evalOverlong);
        List<TrainingRow> Rows(List<TokenizedExample> examples) => ToRows(examples, options);

        var trainLoader = new DataLoader(Rows(train), options.BatchSize, options.SeqLength, tokenizer.PadId, options.Seed, shuffle: true);
        DataLoader? evalLoader = eval is null ? null : new DataLoader(Rows(eval), options.BatchSize, options.SeqLength, tokenizer.PadId, options.Seed, shuffle: false);
        return new PreparedData(tokenizer, trainLoader, evalLoader, train.Count, train.Sum(e => (long)e.TrainableTokens))
        {
            TrainOverlong = trainOverlong,
            EvalOverlong = evalOverlong,
            OverlongSplit = options.Packing,
        };
    }

    /// <summary>
    /// The rows of one JSONL file exactly as training builds them from <paramref name="options"/> (seq_length,
    /// packing, truncate, completion_only_loss): what <c>eval</c> scores, so its loss is the trainer's eval loss.
    /// </summary>
    /// <exception cref="DataException">Tokenizer, data or limits do not fit; the message says where and why.</exception>
    public static (List<TrainingRow> Rows, int Examples, int Overlong) LoadRows(string path, TextTokenizer tokenizer, TrainOptions options, int modelVocabSize)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        var datasetOptions = new DatasetOptions
        {
            CompletionOnlyLoss = options.CompletionOnlyLoss,
            MaxTokens = options.SeqLength,
            Truncate = options.Truncate,
            KeepOverlong = options.Packing,
            ModelVocabSize = modelVocabSize,
        };
        List<TokenizedExample> examples = JsonlDataset.Load(path, tokenizer, datasetOptions, out int overlong);
        return (ToRows(examples, options), examples.Count, overlong);
    }

    private static List<TrainingRow> ToRows(List<TokenizedExample> examples, TrainOptions options) =>
        options.Packing ? SequencePacker.Pack(examples, options.SeqLength) : SequencePacker.Unpacked(examples);
}
