using System.CommandLine;
using Onnx.Lora.Trainer.Data;
using Onnx.Lora.Trainer.Generation;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora generate MODEL --tokenizer TOK [--prompt TEXT]</c>: a greedy sample (no KV cache; for small models).</summary>
internal sealed class GenerateCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("MODEL") { Description = "An .onnx causal LM with input_ids (+ attention_mask) and logits, no KV cache (e.g. a merged model)." };
    private static readonly Option<string> s_tokenizer = new("--tokenizer", "-t") { Description = "SentencePiece .model or tokenizer.json.", Required = true };
    private static readonly Option<string> s_prompt = new("--prompt", "-p") { Description = "Text to continue (after BOS).", DefaultValueFactory = _ => "" };
    private static readonly Option<int> s_maxTokens = new("--max-tokens", "-n") { Description = "New tokens at most.", DefaultValueFactory = _ => 64 };

    public GenerateCommand() : base("generate", "Greedy-generate a sample from a small causal LM (re-runs the prefix per token).")
    {
        Arguments.Add(s_model);
        Options.Add(s_tokenizer);
        Options.Add(s_prompt);
        Options.Add(s_maxTokens);
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        TextTokenizer tokenizer = TextTokenizer.Load(parse.GetValue(s_tokenizer)!);
        using var generator = new GreedyGenerator(parse.GetValue(s_model)!);
        string text = generator.Generate(tokenizer, parse.GetValue(s_prompt)!, parse.GetValue(s_maxTokens));
        await output.WriteLineAsync(text).ConfigureAwait(false);
        return ExitCodes.Success;
    }
}
