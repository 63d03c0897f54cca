using System.CommandLine;
using System.Globalization;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Spectre.Console;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora train [--config FILE] [--KEY VALUE ...]</c>: one flag per <see cref="TrainOptionsLoader.Keys"/> key
/// (kebab-case), flags override the file. Exit codes: 0 done (or early-stopped), 2 bad option or config, 3 a guard
/// stopped the run (NaN/Inf), 4 bad model, 6 bad data or tokenizer, 7 not enough memory/disk, 130 cancelled by Ctrl-C
/// after saving a checkpoint (docs/exit-codes.md).
/// </summary>
internal sealed class TrainCommand : LoraCommand
{
    // Keys that read like switches: given without a value they mean "true" (resume: "latest").
    private static readonly HashSet<string> s_switches = ["packing", "completion_only_loss", "truncate", "use_rslora", "use_dora", "resume"];

    private static readonly Option<string?> s_config = new("--config", "-c") { Description = "JSON or YAML file of training options (snake_case keys; flags override it)." };
    private readonly List<(string Key, Option<string?> Option)> _keyOptions = [];

    public TrainCommand() : base("train", "Train LoRA adapters: base model (LoRA injected on the fly), injected model or llama2.c .bin; JSONL data; checkpoints, resume, metrics.")
    {
        Options.Add(s_config);
        foreach (string key in TrainOptionsLoader.Keys.Order(StringComparer.Ordinal))
        {
            var option = new Option<string?>("--" + key.Replace('_', '-'))
            {
                Description = Describe(key),
                Arity = s_switches.Contains(key) ? ArgumentArity.ZeroOrOne : ArgumentArity.ExactlyOne,
            };
            _keyOptions.Add((key, option));
            Options.Add(option);
        }
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        var overrides = new List<KeyValuePair<string, string>>();
        foreach ((string key, Option<string?> option) in _keyOptions)
        {
            if (parse.GetResult(option) is { } result)
            {
                string? value = result.Tokens.Count > 0 ? result.Tokens[0].Value : null;
                overrides.Add(KeyValuePair.Create(key, value ?? (key == "resume" ? "latest" : "true")));
            }
        }

        TrainOptions options = TrainOptionsLoader.Load(parse.GetValue(s_config), overrides);
        InputPaths.EnsureExists(options.Model, "Model", folderAllowed: false);
        InputPaths.EnsureExists(options.Data, "Data file", folderAllowed: false);
        InputPaths.EnsureExists(options.EvalData, "Eval data file", folderAllowed: false);
        InputPaths.EnsureExists(options.Tokenizer, "Tokenizer");
        bool live = ConsoleProgress.IsLive(output);
        TrainingSummary summary;
        try
        {
            summary = live ? RunLive(options, cancellationToken) : new TrainingRunner(options, new PlainProgress(output)).Run(cancellationToken);
        }
        catch (TrainingGuardException e)
        {
            parse.InvocationConfiguration.Error.WriteLine($"onnx-lora train: stopped: {e.Message.ReplaceLineEndings(" ")}");
            return Task.FromResult(ExitCodes.GuardTripped);
        }

        WriteSummary(output, summary);
        return Task.FromResult(summary.Outcome == RunOutcome.Cancelled ? ExitCodes.Cancelled : ExitCodes.Success);
    }

    /// <summary>Runs training under the live display on <paramref name="console"/> (the terminal by default).</summary>
    internal static TrainingSummary RunLive(TrainOptions options, CancellationToken cancellationToken, IAnsiConsole? console = null)
    {
        TrainingSummary? summary = null;
        (console ?? AnsiConsole.Console).Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = 24 }, new RemainingTimeColumn())
            .Start(ctx =>
            {
                var live = new LiveProgress(ctx);
                summary = new TrainingRunner(options, live).Run(cancellationToken);
            });
        return summary!;
    }

    private static void WriteSummary(TextWriter w, TrainingSummary s)
    {
        static string F(double? v) => v is double d ? d.ToString("F4", CultureInfo.InvariantCulture) : "-";
        w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{s.Outcome.ToString().ToLowerInvariant()}: {s.Steps}/{s.TotalSteps} steps in {s.Seconds:F1} s, {s.TokensSeen:N0} target tokens"));
        w.WriteLine($"  train loss {F(s.FirstTrainLoss)} → {F(s.LastTrainLoss)}");
        if (s.FirstEvalLoss is not null)
        {
            w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  eval loss  {F(s.FirstEvalLoss)} → {F(s.LastEvalLoss)} (best {F(s.BestEvalLoss)}, perplexity {Math.Exp(s.LastEvalLoss!.Value):F2})"));
        }

        if (s.SkippedSteps > 0)
        {
            w.WriteLine($"  skipped {s.SkippedSteps} steps with non-finite loss/gradient");
        }

        if (s.AdapterDir is not null)
        {
            w.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  adapter    {s.AdapterDir} ({s.AdapterBytes / 1024.0:F1} KiB, PEFT safetensors)"));
        }

        w.WriteLine($"  checkpoint {s.LastCheckpoint ?? "-"}");
        w.WriteLine($"  metrics    {s.MetricsFile}");
        if (s.LossPlot is not null)
        {
            w.WriteLine($"  loss curve {s.LossPlot}");
        }

        w.WriteLine($"  lora model {s.LoraModel}");
    }

    private static string Describe(string key) => key switch
    {
        "model" => "Base .onnx (LoRA injected from the lora_* options), an injected .onnx, or a llama2.c .bin.",
        "data" => "Training JSONL: {text} | {prompt,completion} | {messages} | alpaca {instruction,input,output}.",
        "eval_data" => "Held-out JSONL for eval loss / perplexity.",
        "tokenizer" => "SentencePiece .model, tokenizer.json, or a folder holding one.",
        "output_dir" => "Run folder: artifacts/, checkpoints/, adapter/, metrics.jsonl, loss.png, summary.json.",
        "resume" => "Continue from a checkpoint folder, or the latest one in output_dir when given without a value.",
        "lr_scheduler" => "constant, linear or cosine.",
        "memory_limit" => "Memory the run may use (e.g. 6GiB; default: what the machine/cgroup has, or ONNX_LORA_MEMORY_LIMIT); none skips the check.",
        "nan_policy" => "stop (default) or skip a step whose loss/gradient is NaN/Inf.",
        "lora_targets" => "Comma-separated module names/suffixes/regexes, or all-linear.",
        "lora_plus_ratio" => "LoRA+: B's learning rate = ratio × lr.",
        "execution_provider" => "cpu (default), cuda or tensorrt.",
        _ => $"Training option '{key}' (overrides --config).",
    };

    /// <summary>Plain lines for logs/CI: a line every ~5% of the run or 10 s, plus evaluations, checkpoints and phases.</summary>
    private sealed class PlainProgress(TextWriter output) : ITrainingObserver
    {
        private int _every = 1;
        private DateTime _last = DateTime.MinValue;

        public void OnMessage(string message) => output.WriteLine(message);

        public void OnStart(TrainingPlan plan)
        {
            _every = Math.Max(1, plan.TotalSteps / 20);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"training {plan.AdaptedModules} modules, {plan.TrainableParameters:N0} trainable parameters, {plan.TrainRows} rows/epoch, steps {plan.StartStep + 1}..{plan.TotalSteps} → {plan.OutputDir}"));
        }

        public void OnStep(StepReport r)
        {
            if (r.Step % _every != 0 && r.Step != r.TotalSteps && !r.Skipped && DateTime.UtcNow - _last < TimeSpan.FromSeconds(10))
            {
                return;
            }

            _last = DateTime.UtcNow;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"step {r.Step}/{r.TotalSteps}  loss {r.Loss:F4}  lr {r.LearningRate:G3}  grad {r.GradientNorm:F3}  {r.TokensPerSecond:F0} tok/s  eta {r.Eta:hh\\:mm\\:ss}{(r.Skipped ? "  SKIPPED (non-finite)" : "")}"));
        }

        public void OnEvaluation(EvaluationReport r) =>
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"eval @ step {r.Step}: loss {r.Loss:F4}  perplexity {r.Perplexity:F2}{(r.Improved ? "  (best)" : "")}"));

        public void OnCheckpoint(int step, string folder) => output.WriteLine($"saved {folder}");
    }

    /// <summary>The live Spectre.Console display on a terminal.</summary>
    private sealed class LiveProgress(ProgressContext context) : ITrainingObserver
    {
        private ProgressTask? _task;
        private string _eval = "";

        // Phase lines stay short so the description column is not squeezed to "…" on an 80-column terminal.
        public void OnMessage(string message) =>
            context.AddTask(Markup.Escape(message.Length > 56 ? message[..55] + "…" : message), autoStart: true, maxValue: 1).Increment(1);

        public void OnStart(TrainingPlan plan)
        {
            _task = context.AddTask("training", maxValue: plan.TotalSteps);
            _task.Value = plan.StartStep;
        }

        public void OnStep(StepReport r)
        {
            if (_task is null)
            {
                return;
            }

            _task.Value = r.Step;
            _task.Description = Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"step {r.Step}/{r.TotalSteps} loss {r.Loss:F4} lr {r.LearningRate:G2} {r.TokensPerSecond:F0} tok/s{_eval}"));
        }

        public void OnEvaluation(EvaluationReport r) => _eval = string.Create(CultureInfo.InvariantCulture, $" eval {r.Loss:F3}");

        public void OnCheckpoint(int step, string folder) => context.AddTask(Markup.Escape($"saved {Path.GetFileName(folder)}"), maxValue: 1).Increment(1);
    }
}
