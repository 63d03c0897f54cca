namespace Onnx.Lora.Trainer.Runner;

/// <summary>
/// Receives progress from <see cref="TrainingRunner"/>. Library code never writes to the console: the CLI renders
/// these calls (a live Spectre.Console display on a terminal, plain lines in logs); tests record them.
/// All methods are called on the training thread, between steps.
/// </summary>
public interface ITrainingObserver
{
    /// <summary>A preparation phase starts or finishes (converting, injecting, building artifacts, loading data, resuming).</summary>
    void OnMessage(string message);

    /// <summary>Training is about to start (after preparation, and after restoring a checkpoint when resuming).</summary>
    void OnStart(TrainingPlan plan);

    /// <summary>An optimizer step finished (or was skipped for a non-finite loss under <c>nan_policy: skip</c>).</summary>
    void OnStep(StepReport report);

    /// <summary>An evaluation finished.</summary>
    void OnEvaluation(EvaluationReport report);

    /// <summary>A checkpoint was written.</summary>
    void OnCheckpoint(int step, string folder);
}

/// <summary>What a run will do.</summary>
/// <param name="TotalSteps">Optimizer steps of the whole run.</param>
/// <param name="StartStep">Steps already done (non-zero when resuming).</param>
/// <param name="TrainRows">Training rows per epoch (after packing).</param>
/// <param name="EvalRows">Evaluation rows, 0 without eval data.</param>
/// <param name="TrainableParameters">LoRA parameters trained.</param>
/// <param name="AdaptedModules">Modules carrying an adapter.</param>
/// <param name="OutputDir">The run folder.</param>
public sealed record TrainingPlan(int TotalSteps, int StartStep, int TrainRows, int EvalRows, long TrainableParameters, int AdaptedModules, string OutputDir);

/// <summary>One optimizer step as reported.</summary>
/// <param name="Step">One-based step number.</param>
/// <param name="TotalSteps">Steps of the run.</param>
/// <param name="Loss">Mean loss per target token.</param>
/// <param name="LearningRate">Learning rate used (A's; B's is × the LoRA+ ratio).</param>
/// <param name="GradientNorm">Global gradient norm before clipping.</param>
/// <param name="TokensPerSecond">Input tokens per second over this step.</param>
/// <param name="TokensSeen">Target tokens seen so far.</param>
/// <param name="Eta">Estimated time to the last step, from the mean step time since (re)start.</param>
/// <param name="Skipped">True when the step was skipped for a non-finite loss or gradient.</param>
public sealed record StepReport(int Step, int TotalSteps, double Loss, double LearningRate, double GradientNorm, double TokensPerSecond, long TokensSeen, TimeSpan Eta, bool Skipped);

/// <summary>One evaluation as reported.</summary>
/// <param name="Step">Step after which it ran.</param>
/// <param name="Loss">Mean eval loss per target token.</param>
/// <param name="Perplexity">exp(loss).</param>
/// <param name="Improved">True when it is the best so far.</param>
public sealed record EvaluationReport(int Step, double Loss, double Perplexity, bool Improved);

/// <summary>How a run ended.</summary>
public enum RunOutcome
{
    /// <summary>All steps done.</summary>
    Completed,

    /// <summary>Stopped early: the eval loss did not improve for <c>early_stopping_patience</c> evaluations.</summary>
    EarlyStopped,

    /// <summary>Cancelled (Ctrl-C); a checkpoint of the last completed step was saved.</summary>
    Cancelled,
}

/// <summary>The end of a run, also written as <c>summary.json</c>.</summary>
public sealed record TrainingSummary
{
    /// <summary>How it ended.</summary>
    public required RunOutcome Outcome { get; init; }

    /// <summary>Steps completed (of <see cref="TotalSteps"/>).</summary>
    public required int Steps { get; init; }

    /// <summary>Planned steps.</summary>
    public required int TotalSteps { get; init; }

    /// <summary>Train loss of the first step of the run (across resumes, from metrics.jsonl).</summary>
    public double? FirstTrainLoss { get; init; }

    /// <summary>Train loss of the last step.</summary>
    public double? LastTrainLoss { get; init; }

    /// <summary>First eval loss (the one before any training when eval data is given).</summary>
    public double? FirstEvalLoss { get; init; }

    /// <summary>Last eval loss.</summary>
    public double? LastEvalLoss { get; init; }

    /// <summary>Best eval loss.</summary>
    public double? BestEvalLoss { get; init; }

    /// <summary>Target tokens trained on.</summary>
    public long TokensSeen { get; init; }

    /// <summary>Wall time of this invocation (a resumed run counts from its restart).</summary>
    public double Seconds { get; init; }

    /// <summary>Steps skipped for non-finite values (<c>nan_policy: skip</c>).</summary>
    public int SkippedSteps { get; init; }

    /// <summary>The final PEFT adapter folder (null when cancelled before any step).</summary>
    public string? AdapterDir { get; init; }

    /// <summary>Bytes of the adapter folder on disk.</summary>
    public long AdapterBytes { get; init; }

    /// <summary>The last checkpoint written.</summary>
    public string? LastCheckpoint { get; init; }

    /// <summary>The trained LoRA model (LoRA graph with the trained A/B; input of merge / export-adapter), or the untrained one when no step completed.</summary>
    public required string LoraModel { get; init; }

    /// <summary>metrics.jsonl.</summary>
    public required string MetricsFile { get; init; }

    /// <summary>loss.png, when written.</summary>
    public string? LossPlot { get; init; }

    /// <summary>Training examples longer than seq_length (see <see cref="OverlongHandling"/>).</summary>
    public int OverlongTrainExamples { get; init; }

    /// <summary>Eval examples longer than seq_length.</summary>
    public int OverlongEvalExamples { get; init; }

    /// <summary>What happened to over-long examples: "truncated", "split" (packing), or null when there were none.</summary>
    public string? OverlongHandling { get; init; }
}

/// <summary>A guard stopped training (NaN/Inf loss or gradient under <c>nan_policy: stop</c>); the message names the step.</summary>
public class TrainingGuardException : Onnx.Lora.LoraException
{
    /// <summary>Creates the exception.</summary>
    public TrainingGuardException() { }

    /// <summary>Creates the exception with a message.</summary>
    public TrainingGuardException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public TrainingGuardException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The one-based step that tripped the guard.</summary>
    public int Step { get; init; }
}
