using System.CommandLine;
using System.Globalization;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Distributed;
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
    private static readonly Option<string?> s_config = new("--config", "-c") { HelpName = "FILE", Description = "JSON or YAML file of training options (snake_case keys, listed in docs/config.md); flags override it." };
    private static readonly Option<bool> s_printConfigDoc = new("--print-config-doc") { Description = "Print the page of every config key (docs/config.md) and exit." };
    private readonly List<(string Key, Option Option)> _keyOptions = [];

    public TrainCommand() : base("train", "Train LoRA adapters: base model (LoRA injected on the fly), injected model or llama2.c .bin; JSONL data; checkpoints, resume, metrics.")
    {
        Options.Add(s_config);
        Options.Add(s_printConfigDoc);
        foreach (TrainOptionDoc doc in TrainOptionDocs.All)
        {
            Option option = CreateOption(doc);
            _keyOptions.Add((doc.Key, option));
            Options.Add(option);
        }
    }

    /// <summary>One flag per key: switches are bool flags (<c>--packing</c>, <c>--packing false</c>), the rest take a value; help shows the default.</summary>
    private static Option CreateOption(TrainOptionDoc doc)
    {
        string description = doc.Default.Length == 0 ? doc.Description : $"{doc.Description} [default: {doc.Default}]";
        if (doc.Kind == OptionValueKind.Switch)
        {
            return new Option<bool>(doc.Flag) { Description = description };
        }

        return new Option<string?>(doc.Flag)
        {
            Description = description,
            HelpName = doc.Key == "resume" ? "CHECKPOINT" : doc.Kind switch
            {
                OptionValueKind.Integer => "N",
                OptionValueKind.Number => "NUMBER",
                OptionValueKind.List => "A,B,...",
                OptionValueKind.Choice => "NAME",
                _ => doc.Key is "model" or "data" or "eval_data" or "tokenizer" or "output_dir" ? "PATH" : "TEXT",
            },
            // resume alone means "latest".
            Arity = doc.Key == "resume" ? ArgumentArity.ZeroOrOne : ArgumentArity.ExactlyOne,
        };
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        if (parse.GetValue(s_printConfigDoc))
        {
            output.Write(TrainOptionDocs.Markdown());
            return Task.FromResult(ExitCodes.Success);
        }

        List<KeyValuePair<string, string>> overrides = ReadOverrides(parse);
        TrainOptions options = TrainOptionsLoader.Load(parse.GetValue(s_config), overrides);
        // Under mpirun each process is one rank of a data-parallel run; otherwise libmpi is never loaded.
        using DistributedRun distributed = DistributedRun.FromEnvironment(parse.InvocationConfiguration.Error);
        bool live = !distributed.IsDistributed && ConsoleProgress.IsLive(output);
        ITrainingObserver observer = distributed.IsRoot ? new PlainProgress(output, distributed.Ranks) : DistributedTraining.Quiet;
        TrainingSummary summary;
        try
        {
            // Under mpirun the input checks run inside the agreed set-up, so a path missing on one rank fails every rank alike.
            summary = live ? RunLive(EnsureInputsExist(options), cancellationToken)
                : DistributedTraining.Run(distributed, parse.InvocationConfiguration.Error,
                    () => new TrainingRunner(EnsureInputsExist(options), observer) { Distributed = distributed }.Run(cancellationToken));
        }
        catch (TrainingGuardException e)
        {
            parse.InvocationConfiguration.Error.WriteLine($"onnx-lora train: stopped: {e.Message.ReplaceLineEndings(" ")}");
            return Task.FromResult(ExitCodes.GuardTripped);
        }

        if (distributed.IsRoot)
        {
            WriteSummary(output, summary);
        }

        return Task.FromResult(summary.Outcome == RunOutcome.Cancelled ? ExitCodes.Cancelled : ExitCodes.Success);
    }

    private static TrainOptions EnsureInputsExist(TrainOptions options)
    {
        // An encoder-decoder export is named by its folder (or either part's file).
        InputPaths.EnsureExists(options.Model, "Model", folderAllowed: options.Task == Onnx.Lora.Trainer.Tasks.TrainingTasks.Seq2SeqLm);
        InputPaths.EnsureExists(options.Data, "Data file", folderAllowed: false);
        InputPaths.EnsureExists(options.EvalData, "Eval data file", folderAllowed: false);
        InputPaths.EnsureExists(options.Tokenizer, "Tokenizer");
        return options;
    }

    /// <summary>The keys given on the command line, as text, in flag order; switches not given are absent (never "false").</summary>
    internal List<KeyValuePair<string, string>> ReadOverrides(ParseResult parse)
    {
        var overrides = new List<KeyValuePair<string, string>>();
        foreach ((string key, Option option) in _keyOptions)
        {
            // NOTE: a bool option has an implicit result (false) even when absent; taking it would reset the config file's switches.
            if (parse.GetResult(option) is not { Implicit: false } result)
            {
                continue;
            }

            string value = option switch
            {
                Option<bool> flag => parse.GetValue(flag) ? "true" : "false",
                _ => result.Tokens.Count > 0 ? result.Tokens[0].Value : "latest",
            };
            overrides.Add(KeyValuePair.Create(key, value));
        }

        return overrides;
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

        if (s.OverlongHandling is not null)
        {
            w.WriteLine($"  over-long examples {s.OverlongTrainExamples} train, {s.OverlongEvalExamples} eval ({s.OverlongHandling})");
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

    // Resuming a run that already reached max_steps used to print "steps 301..300".
    private static string FinishedLine(TrainingPlan plan) => string.Create(CultureInfo.InvariantCulture,
        $"the run in {plan.OutputDir} is already finished (step {plan.StartStep} of {plan.TotalSteps}); nothing to train (raise max_steps to continue it)");

    /// <summary>Plain lines for logs/CI: a line every ~5% of the run or 10 s, plus evaluations, checkpoints and phases.</summary>
    private sealed class PlainProgress(TextWriter output, int ranks = 1) : ITrainingObserver
    {
        private int _every = 1;
        private DateTime _last = DateTime.MinValue;

        public void OnMessage(string message) => output.WriteLine(message);

        public void OnStart(TrainingPlan plan)
        {
            _every = Math.Max(1, plan.TotalSteps / 20);
            if (plan.StartStep >= plan.TotalSteps)
            {
                output.WriteLine(FinishedLine(plan));
                return;
            }

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
                $"step {r.Step}/{r.TotalSteps}  loss {r.Loss:F4}  lr {NumberText.Plain(r.LearningRate, 3)}  grad {r.GradientNorm:F3}  {r.TokensPerSecond:F0} tok/s{(ranks > 1 ? $" ({ranks} ranks)" : "")}  eta {r.Eta:hh\\:mm\\:ss}{(r.Skipped ? "  SKIPPED (non-finite)" : "")}"));
        }

        public void OnEvaluation(EvaluationReport r) =>
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"eval @ step {r.Step}: loss {r.Loss:F4}  perplexity {r.Perplexity:F2}{string.Concat(r.Metrics.Select(m => $"  {m.Key} {m.Value:F4}"))}{(r.Improved ? "  (best)" : "")}"));

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
            if (plan.StartStep >= plan.TotalSteps)
            {
                context.AddTask(Markup.Escape(FinishedLine(plan)), maxValue: 1).Increment(1);
            }

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
                $"step {r.Step}/{r.TotalSteps} loss {r.Loss:F4} lr {NumberText.Plain(r.LearningRate, 2)} {r.TokensPerSecond:F0} tok/s{_eval}"));
        }

        public void OnEvaluation(EvaluationReport r) => _eval = string.Create(CultureInfo.InvariantCulture, $" eval {r.Loss:F3}");

        public void OnCheckpoint(int step, string folder) => context.AddTask(Markup.Escape($"saved {Path.GetFileName(folder)}"), maxValue: 1).Increment(1);
    }
}
