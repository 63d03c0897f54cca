using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora;

/// <summary>
/// Trains LoRA adapters in-process with the loop behind <c>onnx-lora train</c> (<see cref="TrainingRunner"/>): the same
/// options (<see cref="TrainOptions"/>, or a YAML/JSON config with <see cref="LoadOptions"/>), the same run folder
/// (checkpoints, resume, <c>metrics.jsonl</c>, <c>loss.png</c>, the final PEFT adapter and <c>lora-trained.onnx</c>).
/// </summary>
/// <remarks>
/// Cancelling the token works as Ctrl-C does for the CLI: the step under way finishes, a checkpoint of it is saved, and
/// the summary says <see cref="RunOutcome.Cancelled"/>; <c>Resume = "latest"</c> continues it bit-identically.
/// </remarks>
public static class LoraTrainer
{
    /// <summary>Runs the whole training on a thread-pool thread.</summary>
    /// <param name="options">The run's options; validated before any work.</param>
    /// <param name="progress">Told after every optimizer step: step, loss, learning rate, gradient norm, tokens/s, ETA.</param>
    /// <param name="cancellationToken">Stops after the current step, with a checkpoint (see remarks).</param>
    /// <returns>How the run ended, its losses and where its outputs are.</returns>
    /// <exception cref="TrainingGuardException">A non-finite loss or gradient under <c>nan_policy: stop</c>.</exception>
    /// <exception cref="ToolchainException">Bad options, model, data, tokenizer or checkpoint; raised before training starts.</exception>
    public static Task<TrainingSummary> TrainAsync(TrainOptions options, IProgress<StepReport>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        // NOTE: the token is not given to Task.Run: a token cancelled before the start must still reach the runner, which
        // returns a Cancelled summary (and, when resuming, keeps the checkpoint) instead of a TaskCanceledException.
        return Task.Run(() => Train(options, progress is null ? null : new ProgressObserver(progress), cancellationToken), CancellationToken.None);
    }

    /// <summary>Runs the whole training on the calling thread, reporting every event to <paramref name="observer"/>.</summary>
    /// <param name="options">The run's options; validated before any work.</param>
    /// <param name="observer">Told of phases, the plan, steps, evaluations and checkpoints (on the training thread); null for none.</param>
    /// <param name="cancellationToken">Stops after the current step, with a checkpoint (see remarks).</param>
    /// <returns>How the run ended, its losses and where its outputs are.</returns>
    /// <exception cref="TrainingGuardException">A non-finite loss or gradient under <c>nan_policy: stop</c>.</exception>
    /// <exception cref="ToolchainException">Bad options, model, data, tokenizer or checkpoint; raised before training starts.</exception>
    public static TrainingSummary Train(TrainOptions options, ITrainingObserver? observer = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new TrainingRunner(options, observer).Run(cancellationToken);
    }

    /// <summary>
    /// Reads training options as <c>onnx-lora train --config FILE --KEY VALUE ...</c> does: a YAML or JSON file of
    /// snake_case keys (docs/config.md), then <paramref name="overrides"/> on top.
    /// </summary>
    /// <param name="configFile">The config file, or null for defaults only.</param>
    /// <param name="overrides">snake_case key → value pairs, applied in order after the file.</param>
    /// <exception cref="Onnx.Lora.Data.ConfigException">An unknown key, a bad value or an unreadable file (named with its line).</exception>
    public static TrainOptions LoadOptions(string? configFile, IEnumerable<KeyValuePair<string, string>>? overrides = null) =>
        TrainOptionsLoader.Load(configFile, overrides);

    /// <summary>Forwards steps to an <see cref="IProgress{T}"/>; the other events have no place in it.</summary>
    private sealed class ProgressObserver(IProgress<StepReport> progress) : ITrainingObserver
    {
        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnStep(StepReport report) => progress.Report(report);

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }
}
