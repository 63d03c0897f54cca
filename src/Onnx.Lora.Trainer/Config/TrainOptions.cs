using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Trainer.Schedules;
using Onnx.Lora.Data;

namespace Onnx.Lora.Trainer.Config;

/// <summary>What to do when a step's loss or gradient is NaN or infinite.</summary>
public enum NonFinitePolicy
{
    /// <summary>Stop training with an error naming the step.</summary>
    Stop,

    /// <summary>Skip that optimizer step (parameters and moments unchanged) and go on.</summary>
    Skip,
}

/// <summary>
/// Every option of <c>onnx-lora train</c>. Immutable; build it with <see cref="TrainOptionsLoader"/> (file + flags)
/// or an object initializer, then call <see cref="Validate"/> once before use. Key names in files and flags are
/// the snake_case names given in each member's doc (kebab-case works too).
/// </summary>
public sealed record TrainOptions
{
    // The LoRA defaults are inject's (the rewriter's LoraConfig), so `train` on a base model and `inject` agree.
    private static readonly LoraConfig s_loraDefaults = new();

    /// <summary><c>model</c>: base ONNX model (LoRA injected on the fly) or an already injected one. Required.</summary>
    public string Model { get; init; } = "";

    /// <summary><c>task</c>: what the model is trained to do, one of <see cref="Tasks.TrainingTasks.Known"/> (causal-lm, seq-cls, seq2seq-lm).</summary>
    public string Task { get; init; } = Tasks.TrainingTasks.CausalLm;

    /// <summary><c>data</c>: training JSONL file. Required.</summary>
    public string Data { get; init; } = "";

    /// <summary><c>eval_data</c>: held-out JSONL file, optional.</summary>
    public string? EvalData { get; init; }

    /// <summary><c>tokenizer</c>: a SentencePiece <c>.model</c>, a <c>tokenizer.json</c>, or a folder holding one. Required.</summary>
    public string Tokenizer { get; init; } = "";

    /// <summary><c>output_dir</c>: where checkpoints, metrics and the final adapter go.</summary>
    public string OutputDir { get; init; } = "run";

    /// <summary><c>resume</c>: a checkpoint folder, or <c>latest</c> for the newest one in <see cref="OutputDir"/> (none yet: start from step 0).</summary>
    public string? Resume { get; init; }

    /// <summary><c>seq_length</c>: tokens per row.</summary>
    public int SeqLength { get; init; } = 256;

    /// <summary><c>batch_size</c>: rows per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary><c>gradient_accumulation_steps</c>: micro-batches per optimizer step.</summary>
    public int GradientAccumulationSteps { get; init; } = 1;

    /// <summary><c>epochs</c>: passes over the data (used when <see cref="MaxSteps"/> is not set).</summary>
    public double Epochs { get; init; } = 1;

    /// <summary><c>max_steps</c>: optimizer steps; overrides <see cref="Epochs"/> when set (&gt; 0).</summary>
    public int? MaxSteps { get; init; }

    /// <summary><c>learning_rate</c>: peak learning rate.</summary>
    public double LearningRate { get; init; } = 2e-4;

    /// <summary><c>lora_plus_ratio</c>: LoRA+ λ, B's learning rate = λ·lr (1 = plain LoRA).</summary>
    public double LoraPlusRatio { get; init; } = 1;

    /// <summary><c>weight_decay</c>: decoupled AdamW weight decay.</summary>
    public double WeightDecay { get; init; }

    /// <summary><c>adam_beta1</c>.</summary>
    public double AdamBeta1 { get; init; } = 0.9;

    /// <summary><c>adam_beta2</c>.</summary>
    public double AdamBeta2 { get; init; } = 0.999;

    /// <summary><c>adam_epsilon</c>.</summary>
    public double AdamEpsilon { get; init; } = 1e-8;

    /// <summary><c>lr_scheduler</c>: constant, linear or cosine.</summary>
    public ScheduleKind Schedule { get; init; } = ScheduleKind.Linear;

    /// <summary><c>warmup_steps</c>: explicit warmup (wins over <see cref="WarmupRatio"/> when &gt; 0).</summary>
    public int WarmupSteps { get; init; }

    /// <summary><c>warmup_ratio</c>: warmup as a fraction of the total steps, in [0, 1).</summary>
    public double WarmupRatio { get; init; }

    /// <summary><c>max_grad_norm</c>: global-norm clipping threshold (0 = off).</summary>
    public double MaxGradNorm { get; init; } = 1.0;

    /// <summary><c>seed</c>: drives shuffling, dropout and LoRA init.</summary>
    public int Seed { get; init; } = 42;

    /// <summary><c>eval_steps</c>: evaluate every N optimizer steps (0 = only at the end).</summary>
    public int EvalSteps { get; init; }

    /// <summary><c>early_stopping_patience</c>: stop after N evaluations without improvement (0 = off).</summary>
    public int EarlyStoppingPatience { get; init; }

    /// <summary><c>save_steps</c>: checkpoint every N optimizer steps (0 = only at the end).</summary>
    public int SaveSteps { get; init; } = 100;

    /// <summary><c>save_total_limit</c>: keep the last K checkpoints (0 = keep all).</summary>
    public int SaveTotalLimit { get; init; } = 3;

    /// <summary><c>execution_provider</c>: cpu, cuda or tensorrt.</summary>
    public string ExecutionProvider { get; init; } = "cpu";

    /// <summary><c>device_id</c>: GPU ordinal for cuda/tensorrt.</summary>
    public int DeviceId { get; init; }

    /// <summary><c>cuda_tf32</c>: let fp32 MatMuls run on TF32 tensor cores on cuda/tensorrt (off: fp32 parity with the CPU).</summary>
    public bool CudaTf32 { get; init; }

    /// <summary><c>tensorrt_cache</c>: folder for TensorRT engine and timing caches (null = rebuild engines at every start).</summary>
    public string? TensorRtCache { get; init; }

    /// <summary><c>intra_op_threads</c>: ORT intra-op threads (0 = ORT's default).</summary>
    public int IntraOpThreads { get; init; }

    /// <summary><c>packing</c>: pack several short examples into each row.</summary>
    public bool Packing { get; init; }

    /// <summary><c>completion_only_loss</c>: mask prompt / non-assistant tokens (default on; affects prompt-completion, alpaca and messages).</summary>
    public bool CompletionOnlyLoss { get; init; } = true;

    /// <summary>
    /// <c>truncate</c>: without packing, cut examples longer than <see cref="SeqLength"/> (TRL's default); false refuses
    /// them. With packing, long examples are split across rows instead.
    /// </summary>
    public bool Truncate { get; init; } = true;

    /// <summary><c>nan_policy</c>: stop or skip on a non-finite loss or gradient.</summary>
    public NonFinitePolicy NanPolicy { get; init; } = NonFinitePolicy.Stop;

    /// <summary>
    /// The LoRA configuration the <c>lora_*</c>, <c>use_rslora</c> and <c>use_dora</c> keys set (PEFT's fields, the type
    /// inject, export and import use); null when none was given, so "not set" is told from "set to the default" by
    /// presence. A base model is injected with <see cref="LoraOrDefault"/>; an injected model keeps its own.
    /// </summary>
    public LoraConfig? Lora { get; init; }

    /// <summary><see cref="Lora"/>, or inject's defaults when no LoRA key was given.</summary>
    public LoraConfig LoraOrDefault => Lora ?? s_loraDefaults;

    /// <summary>
    /// <c>memory_limit</c>: memory the run may use (e.g. <c>6GiB</c>), instead of what the machine reports (MemAvailable,
    /// cgroup limit, or the ONNX_LORA_MEMORY_LIMIT variable); <c>none</c> skips the check. A run whose estimate exceeds
    /// it stops before training with the estimate.
    /// </summary>
    public string? MemoryLimit { get; init; }

    /// <summary>
    /// <c>gradient_checkpointing</c>: recompute each decoder layer's activations in the backward pass instead of keeping
    /// them from the forward (HF's <c>gradient_checkpointing</c>): less memory for long sequences, one more forward of
    /// the layers per step; the same loss and gradients.
    /// </summary>
    public bool GradientCheckpointing { get; init; }

    /// <summary>Execution providers the runner knows, lower-case.</summary>
    public static IReadOnlyList<string> KnownExecutionProviders { get; } = ["cpu", "cuda", "tensorrt"];

    /// <summary>
    /// Checks every option against every rule and reports all violations at once.
    /// </summary>
    /// <param name="source">Where the options came from (a file name or "command line"), used in the message.</param>
    /// <exception cref="ConfigException">One or more options are invalid; the message lists each key and why.</exception>
    public void Validate(string? source = null)
    {
        var errors = new List<string>();
        void Require(bool ok, string key, string message)
        {
            if (!ok)
            {
                errors.Add($"'{key}': {message}");
            }
        }

        Require(!string.IsNullOrWhiteSpace(Model), "model", "is required");
        Require(MemoryLimit is null || MemoryLimit.Equals("none", StringComparison.OrdinalIgnoreCase) || SystemResources.TryParseSize(MemoryLimit, out _),
            "memory_limit", "must be a size like 6GiB or 512M, or none");
        Require(!string.IsNullOrWhiteSpace(Data), "data", "is required");
        Require(Tasks.TrainingTasks.Known.Contains(Task), "task", $"is '{Task}'; expected one of {string.Join(", ", Tasks.TrainingTasks.Known)}");
        Require(!(Packing && Task == Tasks.TrainingTasks.SequenceClassification), "packing", "does not apply to seq-cls (one example per row, one label per example)");
        Require(!(Packing && Task == Tasks.TrainingTasks.Seq2SeqLm), "packing", "does not apply to seq2seq-lm (one source and one target per row)");
        Require(!string.IsNullOrWhiteSpace(Tokenizer), "tokenizer", "is required");
        Require(!string.IsNullOrWhiteSpace(OutputDir), "output_dir", "must not be empty");
        Require(SeqLength >= 2, "seq_length", $"is {SeqLength}; expected ≥ 2 (a next-token target needs two tokens)");
        Require(BatchSize >= 1, "batch_size", $"is {BatchSize}; expected ≥ 1");
        Require(GradientAccumulationSteps >= 1, "gradient_accumulation_steps", $"is {GradientAccumulationSteps}; expected ≥ 1");
        Require(MaxSteps is null or > 0, "max_steps", $"is {MaxSteps}; expected > 0");
        Require(MaxSteps is not null || (double.IsFinite(Epochs) && Epochs > 0), "epochs", $"is {Epochs}; expected > 0 (or set max_steps)");
        Require(double.IsFinite(LearningRate) && LearningRate > 0, "learning_rate", $"is {LearningRate}; expected > 0");
        Require(double.IsFinite(LoraPlusRatio) && LoraPlusRatio > 0, "lora_plus_ratio", $"is {LoraPlusRatio}; expected > 0");
        Require(double.IsFinite(WeightDecay) && WeightDecay >= 0, "weight_decay", $"is {WeightDecay}; expected ≥ 0");
        Require(AdamBeta1 is >= 0 and < 1, "adam_beta1", $"is {AdamBeta1}; expected in [0, 1)");
        Require(AdamBeta2 is >= 0 and < 1, "adam_beta2", $"is {AdamBeta2}; expected in [0, 1)");
        Require(AdamEpsilon > 0 && double.IsFinite(AdamEpsilon), "adam_epsilon", $"is {AdamEpsilon}; expected > 0");
        Require(WarmupSteps >= 0, "warmup_steps", $"is {WarmupSteps}; expected ≥ 0");
        Require(WarmupRatio is >= 0 and < 1, "warmup_ratio", $"is {WarmupRatio}; expected in [0, 1)");
        Require(!(WarmupSteps > 0 && WarmupRatio > 0), "warmup_ratio", "set either warmup_steps or warmup_ratio, not both");
        Require(double.IsFinite(MaxGradNorm) && MaxGradNorm >= 0, "max_grad_norm", $"is {MaxGradNorm}; expected ≥ 0 (0 = no clipping)");
        Require(EvalSteps >= 0, "eval_steps", $"is {EvalSteps}; expected ≥ 0");
        Require(EarlyStoppingPatience >= 0, "early_stopping_patience", $"is {EarlyStoppingPatience}; expected ≥ 0");
        Require(EarlyStoppingPatience == 0 || EvalData is not null, "early_stopping_patience", "needs eval_data");
        Require(SaveSteps >= 0, "save_steps", $"is {SaveSteps}; expected ≥ 0");
        Require(SaveTotalLimit >= 0, "save_total_limit", $"is {SaveTotalLimit}; expected ≥ 0");
        Require(KnownExecutionProviders.Contains(ExecutionProvider), "execution_provider",
            $"is '{ExecutionProvider}'; expected one of {string.Join(", ", KnownExecutionProviders)}");
        Require(DeviceId >= 0, "device_id", $"is {DeviceId}; expected ≥ 0");
        Require(IntraOpThreads >= 0, "intra_op_threads", $"is {IntraOpThreads}; expected ≥ 0 (0 = ORT default)");
        LoraConfig lora = LoraOrDefault;
        Require(lora.Rank >= 1, "lora_rank", $"is {lora.Rank}; expected ≥ 1");
        Require(double.IsFinite(lora.Alpha) && lora.Alpha > 0, "lora_alpha", $"is {lora.Alpha}; expected > 0");
        Require(lora.Dropout is >= 0 and < 1, "lora_dropout", $"is {lora.Dropout}; expected in [0, 1)");
        Require(lora.TargetRegex is not null || (lora.Targets.Count > 0 && lora.Targets.All(t => !string.IsNullOrWhiteSpace(t))), "lora_targets", "needs at least one non-empty target");
        try
        {
            Runner.ModelPreparation.ToLoraOptions(this).Validate();
        }
        catch (LoraOptionsException e)
        {
            errors.Add($"lora: {e.Message}");
        }

        if (errors.Count > 0)
        {
            string where = source is null ? "" : $" ({source})";
            throw new ConfigException($"Invalid training options{where}:{Environment.NewLine}  " + string.Join(Environment.NewLine + "  ", errors));
        }
    }

    /// <summary>
    /// Optimizer steps for a run over <paramref name="rowsPerEpoch"/> rows: <see cref="MaxSteps"/> when set, else
    /// ⌈epochs · ⌈rows / batch⌉ / accumulation⌉.
    /// </summary>
    public int TotalOptimizerSteps(int rowsPerEpoch)
    {
        if (MaxSteps is int max)
        {
            return max;
        }

        long microBatches = (rowsPerEpoch + BatchSize - 1) / BatchSize;
        return (int)Math.Max(1, Math.Ceiling(Epochs * microBatches / GradientAccumulationSteps));
    }

    /// <summary>
    /// A fingerprint of the options a resume must not change (data, tokenizer, shapes, seed, schedule, LoRA
    /// config): stored in each checkpoint and compared on <c>--resume</c>. Paths are compared by file name only,
    /// so a run folder can be moved. Max steps/epochs, save/eval cadence and threads may change.
    /// </summary>
    public string ResumeFingerprint()
    {
        LoraConfig l = LoraOrDefault;
        string text = string.Join("|",
            Path.GetFileName(Model), Path.GetFileName(Data), Path.GetFileName(Tokenizer), SeqLength, BatchSize, GradientAccumulationSteps,
            Seed, Packing, CompletionOnlyLoss, Truncate, l.Rank, l.Alpha, string.Join(",", l.Targets), l.Dropout, l.UseRsLora, l.UseDora,
            l.TargetRegex, string.Join(",", l.Exclude), LayersText(l.Layers), string.Join(",", l.RankPattern.Select(PatternText)), string.Join(",", l.AlphaPattern.Select(PatternText)), l.Init,
            Schedule, LearningRate.ToString("R", System.Globalization.CultureInfo.InvariantCulture), LoraPlusRatio.ToString("R", System.Globalization.CultureInfo.InvariantCulture))
            + (Task == Tasks.TrainingTasks.CausalLm ? "" : "|" + Task); // Checkpoints of causal-LM runs keep the fingerprint they had before tasks existed.
        return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..16];
    }

    // The fingerprint's text for layers and patterns as a user writes them ("0-3,7", "q_proj=16").
    private static string? LayersText(IReadOnlySet<int>? layers)
    {
        if (layers is null)
        {
            return null;
        }

        var parts = new List<string>();
        int[] sorted = [.. layers.Order()];
        for (int i = 0; i < sorted.Length;)
        {
            int j = i;
            while (j + 1 < sorted.Length && sorted[j + 1] == sorted[j] + 1)
            {
                j++;
            }

            parts.Add(j == i ? sorted[i].ToString(System.Globalization.CultureInfo.InvariantCulture) : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{sorted[i]}-{sorted[j]}"));
            i = j + 1;
        }

        return string.Join(",", parts);
    }

    private static string PatternText(PatternOverride p) => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{p.Pattern}={p.Value}");

    /// <summary>The schedule these options describe for a run of <paramref name="totalSteps"/> optimizer steps.</summary>
    public LearningRateSchedule CreateSchedule(int totalSteps) =>
        new(Schedule, LearningRate, LearningRateSchedule.ResolveWarmupSteps(WarmupSteps, WarmupRatio, totalSteps), totalSteps);
}
