using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Evaluation;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora eval MODEL --data FILE --tokenizer TOK [--adapter FILE ...]</c>: loss, perplexity and token count of a
/// model on a JSONL file, with train's data handling (seq length, packing, truncation, completion-only loss); the loss
/// is the one `train` reports as eval loss for the same model and data.
/// </summary>
internal sealed class EvalCommand : LoraCommand
{
    private static readonly TrainOptions s_defaults = new();
    private static readonly Argument<string> s_model = new("MODEL") { Description = "An .onnx causal LM: a base, LoRA (e.g. run/lora-trained.onnx), merged, or base-with-slots model; with --task seq2seq-lm an encoder-decoder export's folder (encoder_model.onnx + decoder_model.onnx, base or merged)." };
    private static readonly Option<string> s_task = new("--task") { Description = "causal-lm (next-token loss), seq-cls ({text, label} rows: loss and accuracy of a classifier) or seq2seq-lm ({source, target} rows through the export's encoder then decoder). [default: causal-lm]", DefaultValueFactory = _ => Trainer.Tasks.TrainingTasks.CausalLm };
    private static readonly Option<string> s_data = new("--data", "-d") { Description = "JSONL file (the formats train reads).", Required = true };
    private static readonly Option<string> s_tokenizer = new("--tokenizer", "-t") { Description = "SentencePiece .model or tokenizer.json.", Required = true };
    private static readonly Option<string[]> s_adapters = new("--adapter") { Description = ".onnx_adapter file activated through ONNX Runtime's adapter API (repeatable; the model needs adapter slots).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<int> s_seqLength = new("--seq-length") { Description = $"Tokens per row, as train's seq_length. [default: {s_defaults.SeqLength}]", DefaultValueFactory = _ => s_defaults.SeqLength };
    private static readonly Option<bool> s_packing = new("--packing") { Description = "Pack examples into rows as train --packing does (long ones split)." };
    private static readonly Option<bool> s_truncate = new("--truncate") { Description = $"Without packing, cut over-long examples (false refuses them). [default: {s_defaults.Truncate.ToString().ToLowerInvariant()}]", DefaultValueFactory = _ => s_defaults.Truncate };
    private static readonly Option<bool> s_completionOnly = new("--completion-only-loss") { Description = $"Score completions / assistant replies only. [default: {s_defaults.CompletionOnlyLoss.ToString().ToLowerInvariant()}]", DefaultValueFactory = _ => s_defaults.CompletionOnlyLoss };
    private static readonly Option<bool> s_json = new("--json") { Description = "Print the result as JSON." };

    public EvalCommand() : base("eval", "Loss, perplexity and token count of a model (optionally with .onnx_adapter files) on a JSONL file, with train's data handling.")
    {
        Arguments.Add(s_model);
        foreach (Option o in new Option[] { s_task, s_data, s_tokenizer, s_adapters, s_seqLength, s_packing, s_truncate, s_completionOnly, s_json })
        {
            Options.Add(o);
        }
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string data = parse.GetValue(s_data)!;
        // The data keys go through the training options and their validation, so eval and train read data alike.
        var options = s_defaults with
        {
            Model = parse.GetValue(s_model)!,
            Data = data,
            Tokenizer = parse.GetValue(s_tokenizer)!,
            SeqLength = parse.GetValue(s_seqLength),
            Packing = parse.GetValue(s_packing),
            Truncate = parse.GetValue(s_truncate),
            CompletionOnlyLoss = parse.GetValue(s_completionOnly),
        };
        string task = parse.GetValue(s_task)!;
        if (!Trainer.Tasks.TrainingTasks.Known.Contains(task))
        {
            throw new UsageException($"--task {task}: expected one of {string.Join(", ", Trainer.Tasks.TrainingTasks.Known)}.");
        }

        options = options with { Task = task };
        options.Validate("command line");
        TextTokenizer tokenizer = TextTokenizer.Load(options.Tokenizer);
        EvaluationResult r = task switch
        {
            Trainer.Tasks.TrainingTasks.Seq2SeqLm => EvaluateSeq2Seq(parse, options, tokenizer),
            Trainer.Tasks.TrainingTasks.SequenceClassification => EvaluateClassifier(parse, options, tokenizer),
            _ => ModelEvaluator.Evaluate(options.Model, parse.GetValue(s_adapters) ?? [], data, tokenizer, options),
        };
        if (parse.GetValue(s_json))
        {
            await output.WriteLineAsync(JsonSerializer.Serialize(new
            {
                loss = r.Loss,
                perplexity = r.Perplexity,
                target_tokens = r.TargetTokens,
                examples = r.Examples,
                rows = r.Rows,
                overlong_examples = r.Overlong,
                accuracy = r.Accuracy,
            })).ConfigureAwait(false);
            return ExitCodes.Success;
        }

        await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
            $"loss {r.Loss:F4}  perplexity {r.Perplexity:F3}{(r.Accuracy is double accuracy ? $"  accuracy {accuracy:F4}" : "")}  target tokens {r.TargetTokens:N0}  ({r.Examples} examples, {r.Rows} rows{(r.Overlong > 0 ? $", {r.Overlong} longer than seq_length {(options.Packing ? "split" : "truncated")}" : "")})")).ConfigureAwait(false);
        return ExitCodes.Success;
    }

    private static EvaluationResult EvaluateSeq2Seq(ParseResult parse, TrainOptions options, TextTokenizer tokenizer)
    {
        RefuseAdapters(parse, "merge the adapter into each part of the encoder-decoder export");
        return Seq2SeqEvaluator.Evaluate(options.Model, options.Data, tokenizer, DatasetOptionsOf(options, tokenizer));
    }

    private static EvaluationResult EvaluateClassifier(ParseResult parse, TrainOptions options, TextTokenizer tokenizer)
    {
        RefuseAdapters(parse, "merge the adapter into the classifier");
        return ClassifierEvaluator.Evaluate(options.Model, options.Data, tokenizer, DatasetOptionsOf(options, tokenizer));
    }

    private static void RefuseAdapters(ParseResult parse, string instead)
    {
        if (parse.GetValue(s_adapters) is { Length: > 0 })
        {
            throw new UsageException($"--adapter applies to causal-lm models with adapter slots; {instead} instead.");
        }
    }

    private static DatasetOptions DatasetOptionsOf(TrainOptions options, TextTokenizer tokenizer) =>
        new() { MaxTokens = options.SeqLength, Truncate = options.Truncate, ModelVocabSize = tokenizer.VocabSize };
}
