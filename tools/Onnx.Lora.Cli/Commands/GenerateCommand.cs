using System.CommandLine;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;
using Onnx.Lora.Generation;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora generate MODEL --tokenizer TOK [--adapter FILE ...] --prompt TEXT ...</c>: continues each prompt with the
/// model's KV cache (or by re-running the sequence), greedy or sampled. stdout gets exactly one line per prompt — the
/// prompt and its continuation, streamed as tokens arrive, with line breaks written as <c>\n</c> — so scripts can diff
/// it; the timing line goes to stderr.
/// </summary>
internal sealed class GenerateCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("MODEL") { Description = "An .onnx causal LM: input_ids [+ attention_mask, position_ids, seqlens_k, total_sequence_length, past*] → logits [+ present*]; int32 or int64 ids, fp32/fp16/bf16 caches and logits, as the model declares them." };
    private static readonly Option<string> s_tokenizer = new("--tokenizer", "-t") { Description = "SentencePiece .model or tokenizer.json.", Required = true };
    private static readonly Option<string[]> s_adapters = new("--adapter") { Description = ".onnx_adapter file activated through ONNX Runtime's LoRA adapter API (repeatable; the model needs adapter slots, e.g. base-with-slots.onnx).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string[]> s_prompts = new("--prompt", "-p") { Description = "Text to continue after BOS (repeatable: each prompt is generated in turn).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<int> s_maxTokens = new("--max-tokens", "-n") { Description = "New tokens at most per prompt (generation also stops at EOS).", DefaultValueFactory = _ => 64 };
    private static readonly Option<float> s_temperature = new("--temperature") { Description = "Sampling temperature; 0 = greedy.", DefaultValueFactory = _ => 0f };
    private static readonly Option<int> s_topK = new("--top-k") { Description = "Sample among the K most likely tokens (0 = all).", DefaultValueFactory = _ => 0 };
    private static readonly Option<float> s_topP = new("--top-p") { Description = "Sample within the smallest set of tokens whose probability reaches P (1 = all).", DefaultValueFactory = _ => 1f };
    private static readonly Option<int> s_seed = new("--seed") { Description = "Seed of the sampler (same seed, same text).", DefaultValueFactory = _ => 0 };
    private static readonly Option<string> s_provider = new("--execution-provider") { Description = "cpu (default), cuda or tensorrt (the GPU ones need the Microsoft.ML.OnnxRuntime.Gpu package).", DefaultValueFactory = _ => "cpu" };
    private static readonly Option<int> s_deviceId = new("--device-id") { Description = "GPU ordinal for cuda / tensorrt.", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> s_threads = new("--threads") { Description = "ONNX Runtime intra-op threads (0 = its default: one per core).", DefaultValueFactory = _ => 0 };
    private static readonly Option<bool> s_noKvCache = new("--no-kv-cache") { Description = "Re-run the whole sequence for every token instead of feeding the KV cache back." };

    public GenerateCommand() : base("generate", "Generate text from a causal LM with its KV cache, greedy or sampled, optionally with LoRA adapters through ONNX Runtime.")
    {
        MustExist(s_model, "Model");
        MustExist(s_tokenizer, "Tokenizer", folderAllowed: true);
        MustExist(s_adapters, "Adapter");
        Arguments.Add(s_model);
        Options.Add(s_tokenizer);
        Options.Add(s_adapters);
        Options.Add(s_prompts);
        Options.Add(s_maxTokens);
        Options.Add(s_temperature);
        Options.Add(s_topK);
        Options.Add(s_topP);
        Options.Add(s_seed);
        Options.Add(s_noKvCache);
        Options.Add(s_provider);
        Options.Add(s_deviceId);
        Options.Add(s_threads);
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        TextWriter error = parse.InvocationConfiguration.Error;
        var options = new GenerationOptions
        {
            MaxNewTokens = parse.GetValue(s_maxTokens),
            UseKvCache = !parse.GetValue(s_noKvCache),
            Sampling = new SamplingOptions
            {
                Temperature = parse.GetValue(s_temperature),
                TopK = parse.GetValue(s_topK),
                TopP = parse.GetValue(s_topP),
                Seed = parse.GetValue(s_seed),
            },
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new LoraException($"Invalid generation option {e.ParamName}: {e.Message}", e);
        }

        string[] prompts = parse.GetValue(s_prompts) is { Length: > 0 } given ? given : [""];
        TextTokenizer tokenizer = TextTokenizer.Load(parse.GetValue(s_tokenizer)!);
        ExecutionProvider provider = ExecutionProviders.Parse(parse.GetValue(s_provider)!);
        using SessionOptions session = ExecutionProviders.CreateSessionOptions(provider, parse.GetValue(s_threads), parse.GetValue(s_deviceId));
        // ORT's own log line would repeat the failure that the one-line error already reports.
        session.LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL;
        using TextGenerator generator = TextGenerator.Create(parse.GetValue(s_model)!, parse.GetValue(s_adapters) ?? [], session);
        generator.CheckTokenizer(tokenizer);
        foreach (string prompt in prompts)
        {
            cancellationToken.ThrowIfCancellationRequested();
            await output.WriteAsync(OneLine(prompt)).ConfigureAwait(false);
            GenerationResult result = generator.Generate(tokenizer, prompt, options, piece =>
            {
                // Library callback, synchronous by design: one piece per token, flushed so the text streams.
                output.Write(OneLine(piece));
                output.Flush();
            });
            await output.WriteLineAsync().ConfigureAwait(false);
            await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            await error.WriteLineAsync(Stats(result)).ConfigureAwait(false);
        }

        return ExitCodes.Success;
    }

    /// <summary>Keeps one prompt's text on one line (stories contain paragraph breaks).</summary>
    private static string OneLine(string text) => text.Replace("\r", "\\r", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    private static string Stats(GenerationResult r) => string.Create(
        CultureInfo.InvariantCulture,
        $"{r.NewTokens.Count} tokens, prefill {r.PromptTokens.Count} tokens {r.PrefillTime.TotalMilliseconds:F1} ms, decode {r.DecodeTokensPerSecond:F1} tokens/s ({(r.UsedKvCache ? "kv cache" : "recompute")}){(r.EndedAtContextLimit ? ", stopped: the model's context is full" : "")}");
}
