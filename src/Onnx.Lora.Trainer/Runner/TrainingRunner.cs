using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Data;
using Onnx.Lora.Trainer.Distributed;
using Onnx.Lora.Trainer.Metrics;
using Onnx.Lora.Trainer.Optim;
using Onnx.Lora.Trainer.Schedules;
using Onnx.Lora.Trainer.Tasks;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>
/// The training loop behind <c>onnx-lora train</c>: prepares the model (llama2.c conversion, LoRA injection when the
/// model has no manifest, training artifacts), validates all data up front, then runs optimizer steps with the
/// schedule, LoRA+, gradient accumulation and clipping, evaluates, checkpoints, and writes the final PEFT adapter,
/// metrics.jsonl, loss.png and summary.json. Run folder layout:
/// <c>artifacts/</c> (LoRA model + training/eval graphs), <c>checkpoints/checkpoint-N/</c>, <c>adapter/</c>,
/// <c>metrics.jsonl</c>, <c>loss.png</c>, <c>summary.json</c>.
/// </summary>
/// <remarks>
/// NOTE: a resumed run is bit-identical to an uninterrupted one because everything a step depends on is restored
/// exactly: parameters (raw training layout), AdamW moments and step count, data position (the epoch order is a pure
/// function of seed and epoch), and the schedule (a pure function of the step). LoRA dropout draws its masks inside
/// ONNX Runtime and is therefore not reproducible across a resume.
/// </remarks>
public sealed partial class TrainingRunner
{
    /// <summary>Folder of the LoRA model and training graphs inside the run folder.</summary>
    public const string ArtifactsFolder = "artifacts";

    /// <summary>Folder of the checkpoints inside the run folder.</summary>
    public const string CheckpointsFolder = "checkpoints";

    /// <summary>Folder of the final PEFT adapter inside the run folder.</summary>
    public const string AdapterFolder = "adapter";

    /// <summary>Metrics file name.</summary>
    public const string MetricsFile = "metrics.jsonl";

    /// <summary>Loss-curve file name.</summary>
    public const string LossPlotFile = "loss.png";

    /// <summary>Summary file name.</summary>
    public const string SummaryFile = "summary.json";

    /// <summary>
    /// File name of the trained LoRA model in the run folder: the LoRA graph with the trained A/B as initializers, the
    /// input of <c>onnx-lora merge</c> and <c>export-adapter</c>.
    /// </summary>
    public const string TrainedModelFile = "lora-trained.onnx";

    /// <summary>File name of the LoRA model inside <see cref="ArtifactsFolder"/> (when injected by the runner).</summary>
    public const string LoraModelFile = "model.lora.onnx";

    private static readonly JsonSerializerOptions s_json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    private readonly TrainOptions _options;
    private readonly ITrainingObserver _observer;

    /// <summary>Creates a runner for validated <paramref name="options"/>.</summary>
    public TrainingRunner(TrainOptions options, ITrainingObserver? observer = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _observer = observer ?? NullObserver.Instance;
    }

    /// <summary>The ranks of a data-parallel run (<c>mpirun -np N</c>); one process by default.</summary>
    public DistributedRun Distributed { get; init; } = DistributedRun.Single;

    /// <summary>Test hook: called after each file of a checkpoint is written (throw to simulate a kill mid-save).</summary>
    internal Action<string>? AfterCheckpointFileWritten { get; init; }

    /// <summary>Runs the whole training.</summary>
    /// <param name="cancellationToken">Cancelling (Ctrl-C) saves a checkpoint of the last completed step and returns <see cref="RunOutcome.Cancelled"/>.</param>
    /// <exception cref="TrainingGuardException">A non-finite loss or gradient under <c>nan_policy: stop</c>.</exception>
    /// <exception cref="LoraException">Bad options, model, data, tokenizer or checkpoint; raised before training starts.</exception>
    public TrainingSummary Run(CancellationToken cancellationToken = default)
    {
        var clock = Stopwatch.StartNew();
        TrainOptions o = _options;
        o.Validate();
        ExecutionProvider provider = ExecutionProviders.Parse(o.ExecutionProvider);
        // Fail fast on a missing provider, before any conversion or data work.
        var gpu = new Gpu.GpuProviderOptions { UseTf32 = o.CudaTf32, TensorRtCacheFolder = o.TensorRtCache };
        ExecutionProviders.CreateSessionOptions(provider, o.IntraOpThreads, o.DeviceId, gpu: gpu).Dispose();

        string outputDir = Path.GetFullPath(o.OutputDir);
        string checkpointsDir = Path.Combine(outputDir, CheckpointsFolder);
        string? resumeFrom = ResolveResume(o, checkpointsDir);
        if (resumeFrom is null && o.Resume is not null)
        {
            // A run killed before its first checkpoint has nothing to resume: it starts over (the metrics of the
            // dead run are dropped below), so "always pass --resume latest" is a safe restart policy.
            _observer.OnMessage($"no checkpoint in {checkpointsDir} yet; starting from step 0");
        }

        if (resumeFrom is null && CheckpointStore.List(checkpointsDir).Count > 0)
        {
            throw new ConfigException($"Output folder '{outputDir}' already holds checkpoints; pass --resume to continue that run or choose another output_dir.");
        }

        TrainingCheckpoint? checkpoint = null;
        if (resumeFrom is not null)
        {
            _observer.OnMessage($"resuming from {resumeFrom}");
            checkpoint = CheckpointStore.Load(resumeFrom);
            string fingerprint = Distributed.GlobalView(o).ResumeFingerprint();
            if (checkpoint.State.OptionsFingerprint is { } saved && saved != fingerprint)
            {
                throw new CheckpointException($"Checkpoint '{resumeFrom}' was made with different data/model/shape/LoRA/schedule options (fingerprint {saved}, now {fingerprint}); a resume must use the same ones.");
            }
        }

        // The one read of the model (weights left on disk) serves the memory check, the data checks and the preparation.
        using ModelSource source = ModelPreparation.Open(o);
        ModelLimits limits = source.Limits;
        CheckMemory(o, limits.Shape);
        ITrainingTask task = TrainingTasks.Create(o.Task, o.Model, limits);

        // Data first: a bad row or tokenizer is reported before any conversion, injection or graph building.
        _observer.OnMessage($"reading data {o.Data}" + (o.EvalData is null ? "" : $" and {o.EvalData}"));
        PreparedData data = DataPipeline.Prepare(o, limits.VocabSize, limits.MaxPositions, limits.Name, task.LoadExamples);
        if (data.OverlongNote(o.SeqLength) is { } overlong)
        {
            _observer.OnMessage(overlong);
        }

        VocabularyGuard.Check(data.Tokenizer, limits.VocabSize);
        Distributed.Shard(data);
        Distributed.Agree(); // A rank that cannot read its data stops every rank here, before the model is prepared.
        string artifactsDir = Path.Combine(outputDir, ArtifactsFolder);
        PreparedModel model = Distributed.RootFirst(() => ModelPreparation.Prepare(o, source, artifactsDir, _observer, task.LossHead), DistributedModel.Describe,
            prepared => DistributedModel.Load(o, prepared, artifactsDir, limits));
        TrainingGraphMemory.Check(o, model.Artifacts, limits.Shape, _observer.OnMessage, model.MemoryProfile); // the graph's own walk, before any step
        if (model.LoraModel is null)
        {
            source.Release();
        }

        int totalSteps = Distributed.GlobalView(o).TotalOptimizerSteps(data.Train.RowCount);
        LearningRateSchedule schedule = o.CreateSchedule(totalSteps);
        var scales = o.LoraPlusRatio == 1 ? null
            : model.Manifest.Modules.ToDictionary(m => m.LoraB, _ => (float)o.LoraPlusRatio, StringComparer.Ordinal);
        var sessionOptions = new TrainingSessionOptions
        {
            Provider = provider,
            DeviceId = o.DeviceId + (provider == ExecutionProvider.Cpu ? 0 : Distributed.LocalRank),
            IntraOpThreads = o.IntraOpThreads,
            Gpu = gpu,
            MaxGradientNorm = (float)o.MaxGradNorm,
            LearningRate = (float)o.LearningRate,
            AdamW = new AdamWOptions { Beta1 = (float)o.AdamBeta1, Beta2 = (float)o.AdamBeta2, Epsilon = (float)o.AdamEpsilon, WeightDecay = (float)o.WeightDecay },
            LearningRateScales = scales,
            Communicator = Distributed.StepCommunicator,
        };

        _observer.OnMessage("opening ONNX Runtime sessions");
        using LoraTrainingSession session = LoraTrainingSession.Create(model.Artifacts, sessionOptions);
        var loop = new LoopState();
        if (checkpoint is not null)
        {
            foreach (NamedTensor p in checkpoint.Parameters)
            {
                session.SetParameter(p.Name, p.Data);
            }

            session.RestoreOptimizerState(checkpoint.Moments, checkpoint.State.OptimizerStep);
            data.Train.Seek(checkpoint.State.DataPosition);
            loop.Step = checkpoint.State.GlobalStep;
            loop.TokensSeen = checkpoint.State.TokensSeen;
            loop.BestEvalLoss = checkpoint.State.BestEvalLoss;
            loop.EvaluationsWithoutImprovement = checkpoint.State.EvaluationsWithoutImprovement;
            loop.LastLearningRate = checkpoint.State.LastLearningRate;
            loop.LastCheckpoint = resumeFrom;
        }

        using MetricsLog? metrics = Distributed.IsRoot ? MetricsLog.Open(Path.Combine(outputDir, MetricsFile), checkpoint?.State.GlobalStep) : null;
        long trainable = session.Parameters.Sum(p => p.ElementCount);
        _observer.OnStart(new TrainingPlan(totalSteps, loop.Step, data.Train.RowCount, data.Eval?.RowCount ?? 0, trainable, model.Manifest.Modules.Count, outputDir));

        Distributed.BeginTraining();
        var context = new RunContext(o, session, data, model, schedule, metrics, checkpointsDir, totalSteps, loop) { Task = task };
        if (checkpoint is null && data.Eval is not null)
        {
            // The eval loss of the untrained adapter: the baseline every later evaluation is compared with.
            Evaluate(context, step: 0, countForEarlyStopping: false);
        }

        RunOutcome outcome = TrainLoop(context, cancellationToken);
        if (outcome != RunOutcome.Cancelled && data.Eval is not null && loop.LastEvaluatedStep != loop.Step)
        {
            Evaluate(context, loop.Step, countForEarlyStopping: false);
        }

        if (loop.Step > 0 && loop.LastSavedStep != loop.Step)
        {
            Save(context);
        }

        string? adapterDir = null;
        string? trainedModel = null;
        long adapterBytes = 0;
        bool export = outcome != RunOutcome.Cancelled && loop.Step > 0 && Distributed.IsRoot;
        List<NamedTensor>? trained = export ? CurrentParameters(session) : null;

        // The sessions' arena and their mapping of weights.data go before the trained model is written from the
        // prepared model's own mapping: with both, the end of a run was its peak (135M shape at 256 x 2: 2.43 GiB RSS
        // against 1.79 GiB in the step, the weights' pages mapped twice).
        session.Dispose();
        if (trained is not null)
        {
            adapterDir = Path.Combine(outputDir, AdapterFolder);
            Directory.CreateDirectory(adapterDir);
            PeftAdapter.Export(CheckpointStore.ToAdapterWeights(model.Manifest, trained), adapterDir, model.Manifest.ConfigOrDerived(), model.Manifest.Config?.BaseModelNameOrPath ?? BaseModelReference.For(o.Model), task.PeftTaskType);
            adapterBytes = Directory.EnumerateFiles(adapterDir).Sum(f => new FileInfo(f).Length);
            trainedModel = Path.Combine(outputDir, TrainedModelFile);
            WriteTrainedModel(trained, model, trainedModel);
        }

        string? plot = null;
        if (metrics is not null && metrics.TrainLoss.Count + metrics.EvalLoss.Count > 0)
        {
            plot = Path.Combine(outputDir, LossPlotFile);
            LossCurvePlot.Write(plot, metrics.TrainLoss, metrics.EvalLoss, $"LoRA training — {model.Name}", learningRate: metrics.LearningRate);
        }

        var summary = new TrainingSummary
        {
            Outcome = outcome,
            Steps = loop.Step,
            TotalSteps = totalSteps,
            FirstTrainLoss = metrics?.TrainLoss.First,
            LastTrainLoss = metrics?.TrainLoss.Last,
            FirstEvalLoss = metrics?.EvalLoss.First,
            LastEvalLoss = metrics?.EvalLoss.Last,
            BestEvalLoss = metrics?.EvalLoss.Min,
            TokensSeen = loop.TokensSeen,
            Seconds = clock.Elapsed.TotalSeconds,
            SkippedSteps = loop.Skipped,
            AdapterDir = adapterDir,
            AdapterBytes = adapterBytes,
            LastCheckpoint = loop.LastCheckpoint,
            LoraModel = trainedModel ?? model.LoraModelPath,
            MetricsFile = metrics?.Path ?? Path.Combine(outputDir, MetricsFile),
            LossPlot = plot,
            OverlongTrainExamples = data.TrainOverlong,
            OverlongEvalExamples = data.EvalOverlong,
            OverlongHandling = data.TrainOverlong + data.EvalOverlong == 0 ? null : data.OverlongSplit ? "split" : "truncated",
        };
        if (Distributed.IsRoot)
        {
            AtomicFile.WriteAllText(Path.Combine(outputDir, SummaryFile), JsonSerializer.Serialize(summary, s_json));
        }

        return summary;
    }

    /// <summary>Estimates the run's peak memory and stops before anything is allocated when it cannot fit.</summary>
    private void CheckMemory(TrainOptions o, ModelShape shape)
    {
        if (TrainingGraphMemory.IsOff(o))
        {
            return;
        }

        TrainingMemoryEstimate estimate = TrainingMemoryEstimate.Estimate(o, shape, TrainingGraphMemory.DataBytes(o));
        MemoryBudget budget = TrainingGraphMemory.Budget(o);
        _observer.OnMessage($"memory: estimated peak {estimate}; {SystemResources.FormatGiB(budget.Bytes)} available ({budget.Source})");
        estimate.EnsureFits(budget);
    }

    private RunOutcome TrainLoop(RunContext c, CancellationToken cancellationToken)
    {
        TrainOptions o = c.Options;
        LoopState loop = c.Loop;
        var micro = new MicroBatchBuffers(o.GradientAccumulationSteps);
        var batches = new TrainingBatch[o.GradientAccumulationSteps];
        var sinceStart = Stopwatch.StartNew();
        var stepClock = new Stopwatch();
        int firstStep = loop.Step;
        bool stopAgreed = false;
        while (loop.Step < c.TotalSteps)
        {
            // Across ranks, a stop is only taken when all ranks know of it (agreed in the previous step's all-reduce).
            if (Distributed.IsDistributed ? stopAgreed : cancellationToken.IsCancellationRequested)
            {
                return RunOutcome.Cancelled;
            }

            long inputTokens = 0;
            int targetTokens = 0;
            for (int k = 0; k < batches.Length; k++)
            {
                Batch b = c.Data.Train.Next();
                targetTokens += b.TargetTokens;
                for (int i = 0; i < b.AttentionMask.Length; i++)
                {
                    inputTokens += b.AttentionMask[i];
                }

                batches[k] = micro.Hold(k, b);
            }

            double lr = c.Schedule.PeakLearningRate * c.Schedule.Factor(loop.Step);
            c.Session.LearningRate = (float)lr;
            stepClock.Restart();
            Span<double> stepSums = [inputTokens, targetTokens, cancellationToken.IsCancellationRequested ? 1 : 0];
            TrainStepResult r = c.Session.Step(batches, stepSums); // Sums are global across ranks afterwards.
            (inputTokens, targetTokens, stopAgreed) = ((long)stepSums[0], (int)stepSums[1], stepSums[2] > 0);
            double seconds = stepClock.Elapsed.TotalSeconds;
            int stepNumber = loop.Step + 1;
            if (r.NonFinite)
            {
                string what = float.IsFinite(r.Loss) ? FormattableString.Invariant($"gradient norm {r.GradientNorm}") : FormattableString.Invariant($"loss {r.Loss}");
                if (o.NanPolicy == NonFinitePolicy.Stop)
                {
                    string where = loop.LastCheckpoint is null ? "." : $", last checkpoint '{loop.LastCheckpoint}'.";
                    throw new TrainingGuardException(string.Create(CultureInfo.InvariantCulture,
                        $"Step {stepNumber}: the {what} is not finite (learning rate {lr:G4}). Training stopped; parameters are those after step {loop.Step}{where} Lower learning_rate, check the data, or set nan_policy: skip."))
                    { Step = stepNumber };
                }

                loop.Skipped++;
            }
            else
            {
                loop.TokensSeen += targetTokens;
            }

            loop.Step = stepNumber;
            loop.LastLearningRate = lr;
            double tokensPerSecond = seconds > 0 ? inputTokens / seconds : 0;
            double epoch = c.Data.Train.Position.Epoch + ((double)c.Data.Train.Position.Index / c.Data.Train.RowCount);
            c.Metrics?.Write(new MetricRecord
            {
                Kind = "train",
                Step = stepNumber,
                Loss = r.Loss,
                LearningRate = lr,
                GradNorm = r.GradientNorm,
                TokensPerSecond = tokensPerSecond,
                TokensSeen = loop.TokensSeen,
                Epoch = epoch,
                ElapsedSeconds = sinceStart.Elapsed.TotalSeconds,
            });
            double perStep = sinceStart.Elapsed.TotalSeconds / (stepNumber - firstStep);
            _observer.OnStep(new StepReport(stepNumber, c.TotalSteps, r.Loss, lr, r.GradientNorm, tokensPerSecond, loop.TokensSeen,
                TimeSpan.FromSeconds(perStep * (c.TotalSteps - stepNumber)), r.NonFinite));

            if (c.Data.Eval is not null && o.EvalSteps > 0 && stepNumber % o.EvalSteps == 0)
            {
                Evaluate(c, stepNumber, countForEarlyStopping: true);
                if (o.EarlyStoppingPatience > 0 && loop.EvaluationsWithoutImprovement >= o.EarlyStoppingPatience)
                {
                    return RunOutcome.EarlyStopped;
                }
            }

            if (o.SaveSteps > 0 && stepNumber % o.SaveSteps == 0 && stepNumber < c.TotalSteps)
            {
                Save(c);
            }
        }

        return RunOutcome.Completed;
    }

    private void Evaluate(RunContext c, int step, bool countForEarlyStopping)
    {
        DataLoader eval = c.Data.Eval!;
        eval.Seek(new DataPosition(0, 0));
        double lossSum = 0;
        double tokenSum = 0;
        int metricCount = c.Session.EvalMetrics.Count;
        Span<double> sums = stackalloc double[2 + metricCount];
        for (int i = 0; i < eval.BatchesPerEpoch; i++)
        {
            Batch b = eval.Next();
            if (b.RealRows == 0)
            {
                continue; // This rank's share of the last global batch is empty.
            }

            EvalResult r = c.Session.Evaluate(ToTrainingBatch(b));
            lossSum += (double)r.Loss * r.Tokens;
            tokenSum += r.Tokens;
            for (int m = 0; m < metricCount; m++)
            {
                sums[2 + m] += c.Session.GetEvalMetric(m); // Sums over the batch's counted samples (e.g. correct predictions).
            }
        }

        (sums[0], sums[1]) = (lossSum, tokenSum);
        Distributed.SumAcrossRanks(sums);
        (lossSum, tokenSum) = (sums[0], sums[1]);
        double loss = tokenSum > 0 ? lossSum / tokenSum : double.NaN;
        var metrics = new KeyValuePair<string, double>[metricCount];
        for (int m = 0; m < metricCount; m++)
        {
            metrics[m] = KeyValuePair.Create(c.Session.EvalMetrics[m], tokenSum > 0 ? sums[2 + m] / tokenSum : double.NaN);
        }

        LoopState loop = c.Loop;
        bool improved = loop.BestEvalLoss is not double best || loss < best;
        if (improved)
        {
            loop.BestEvalLoss = loss;
            loop.EvaluationsWithoutImprovement = 0;
        }
        else if (countForEarlyStopping)
        {
            loop.EvaluationsWithoutImprovement++;
        }

        loop.LastEvaluatedStep = step;
        c.Metrics?.Write(new MetricRecord { Kind = "eval", Step = step, Loss = loss, TokensSeen = loop.TokensSeen, Metrics = metrics });
        _observer.OnEvaluation(new EvaluationReport(step, loss, Math.Exp(loss), improved) { Metrics = metrics });
    }

    private sealed record RunContext(TrainOptions Options, LoraTrainingSession Session, PreparedData Data, PreparedModel Model,
        LearningRateSchedule Schedule, MetricsLog? Metrics, string CheckpointsDir, int TotalSteps, LoopState Loop)
    {
        public ITrainingTask Task { get; init; } = CausalLmTask.Instance;
    }

    private sealed class LoopState
    {
        public int Step { get; set; }

        public long TokensSeen { get; set; }

        public double? BestEvalLoss { get; set; }

        public int EvaluationsWithoutImprovement { get; set; }

        public double LastLearningRate { get; set; }

        public int LastSavedStep { get; set; } = -1;

        public int LastEvaluatedStep { get; set; } = -1;

        public string? LastCheckpoint { get; set; }

        public int Skipped { get; set; }
    }

    private sealed class NullObserver : ITrainingObserver
    {
        public static readonly NullObserver Instance = new();

        public void OnMessage(string message) { }

        public void OnStart(TrainingPlan plan) { }

        public void OnStep(StepReport report) { }

        public void OnEvaluation(EvaluationReport report) { }

        public void OnCheckpoint(int step, string folder) { }
    }
}
