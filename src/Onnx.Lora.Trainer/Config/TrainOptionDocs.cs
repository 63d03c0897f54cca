using System.Globalization;
using System.Text;

namespace Onnx.Lora.Trainer.Config;

/// <summary>What kind of value a training key takes (decides how help shows it and whether it is a switch).</summary>
public enum OptionValueKind
{
    /// <summary>true/false; a flag on the command line (<c>--packing</c>, <c>--packing false</c>).</summary>
    Switch,

    /// <summary>A whole number.</summary>
    Integer,

    /// <summary>A number.</summary>
    Number,

    /// <summary>Text (a path, a name).</summary>
    Text,

    /// <summary>A list (comma-separated on the command line, a YAML/JSON list in a file).</summary>
    List,

    /// <summary>One of a few names.</summary>
    Choice,
}

/// <summary>The documentation of one training key: what it does, its value kind, and its default as the code has it.</summary>
/// <param name="Key">snake_case key (a flag is <c>--</c> + kebab-case).</param>
/// <param name="Kind">Its value kind.</param>
/// <param name="Description">What it does.</param>
/// <param name="Default">Its default, read from a default <see cref="TrainOptions"/> and formatted for people.</param>
/// <param name="Group">Section of the generated page.</param>
public sealed record TrainOptionDoc(string Key, OptionValueKind Kind, string Description, string Default, string Group)
{
    /// <summary>The command-line flag.</summary>
    public string Flag => "--" + Key.Replace('_', '-');
}

/// <summary>
/// The one description of every <c>train</c> key: <c>train --help</c> and docs/config.md are both generated from it
/// (<c>onnx-lora train --print-config-doc</c>), and a test fails when the page, this table and
/// <see cref="TrainOptionsLoader.Keys"/> disagree. Defaults are read from <c>new TrainOptions()</c>, never retyped.
/// </summary>
public static class TrainOptionDocs
{
    private static readonly TrainOptions s_defaults = new();

    private static readonly TrainOptionDoc[] s_docs =
    [
        Doc("model", OptionValueKind.Text, "Base .onnx (LoRA injected from the lora_* keys), an already injected .onnx, or a llama2.c .bin (converted first); seq2seq-lm: the encoder-decoder export's folder (or either part). Required.", o => o.Model, "Inputs and outputs"),
        Doc("task", OptionValueKind.Choice, "causal-lm (next-token prediction), seq-cls (sequence classification with the model's own head: logits [batch, classes]; rows {text, label}, label a class id or a name from label2id in the config.json beside the model; eval reports accuracy), or seq2seq-lm (an encoder-decoder export: model is its folder or either part, encoder_model.onnx + decoder_model.onnx with config.json giving decoder_start_token_id and pad_token_id; rows {source, target}; the decoder reads the target shifted right, teacher forcing; one adapter for both parts).", o => o.Task, "Inputs and outputs"),
        Doc("data", OptionValueKind.Text, "Training JSONL: {text} | {prompt, completion} | {messages} | alpaca {instruction, input, output}; seq-cls: {text, label}; seq2seq-lm: {source, target}. Required.", o => o.Data, "Inputs and outputs"),
        Doc("eval_data", OptionValueKind.Text, "Held-out JSONL for eval loss / perplexity (same formats).", o => o.EvalData, "Inputs and outputs"),
        Doc("tokenizer", OptionValueKind.Text, "SentencePiece .model, tokenizer.json, or a folder holding one. Required.", o => o.Tokenizer, "Inputs and outputs"),
        Doc("output_dir", OptionValueKind.Text, "Run folder: artifacts/, checkpoints/, adapter/, lora-trained.onnx, metrics.jsonl, loss.png, summary.json.", o => o.OutputDir, "Inputs and outputs"),
        Doc("resume", OptionValueKind.Text, "Continue from a checkpoint folder, or from the newest one in output_dir when given without a value (latest); no checkpoint yet: start over.", o => o.Resume, "Inputs and outputs"),
        Doc("seq_length", OptionValueKind.Integer, "Tokens per row (at most the model's max positions).", o => o.SeqLength, "Data"),
        Doc("packing", OptionValueKind.Switch, "Pack several examples into each row (TRL's packing); an example longer than seq_length is split across rows.", o => o.Packing, "Data"),
        Doc("truncate", OptionValueKind.Switch, "Without packing: cut an example longer than seq_length to seq_length (TRL's default); false refuses such examples instead.", o => o.Truncate, "Data"),
        Doc("completion_only_loss", OptionValueKind.Switch, "Train on completions / assistant replies only (prompt and other roles masked).", o => o.CompletionOnlyLoss, "Data"),
        Doc("batch_size", OptionValueKind.Integer, "Rows per micro-batch.", o => o.BatchSize, "Optimization"),
        Doc("gradient_accumulation_steps", OptionValueKind.Integer, "Micro-batches per optimizer step.", o => o.GradientAccumulationSteps, "Optimization"),
        Doc("epochs", OptionValueKind.Number, "Passes over the data (used when max_steps is not set).", o => o.Epochs, "Optimization"),
        Doc("max_steps", OptionValueKind.Integer, "Optimizer steps; overrides epochs when set.", o => o.MaxSteps, "Optimization"),
        Doc("learning_rate", OptionValueKind.Number, "Peak learning rate (AdamW).", o => o.LearningRate, "Optimization"),
        Doc("lr_scheduler", OptionValueKind.Choice, "Learning-rate schedule after warmup: constant, linear or cosine.", o => o.Schedule, "Optimization"),
        Doc("warmup_steps", OptionValueKind.Integer, "Linear warmup steps (set this or warmup_ratio).", o => o.WarmupSteps, "Optimization"),
        Doc("warmup_ratio", OptionValueKind.Number, "Warmup as a fraction of the total steps, in [0, 1).", o => o.WarmupRatio, "Optimization"),
        Doc("weight_decay", OptionValueKind.Number, "Decoupled AdamW weight decay.", o => o.WeightDecay, "Optimization"),
        Doc("adam_beta1", OptionValueKind.Number, "AdamW β1.", o => o.AdamBeta1, "Optimization"),
        Doc("adam_beta2", OptionValueKind.Number, "AdamW β2.", o => o.AdamBeta2, "Optimization"),
        Doc("adam_epsilon", OptionValueKind.Number, "AdamW ε.", o => o.AdamEpsilon, "Optimization"),
        Doc("gradient_checkpointing", OptionValueKind.Switch, "Recompute each decoder layer's activations in the backward pass instead of keeping them (HF's gradient_checkpointing): less memory for long sequences, about one more forward per step; same loss and gradients.", o => o.GradientCheckpointing, "Optimization"),
        Doc("max_grad_norm", OptionValueKind.Number, "Clip the global gradient norm to this (0 = no clipping).", o => o.MaxGradNorm, "Optimization"),
        Doc("lora_plus_ratio", OptionValueKind.Number, "LoRA+: B's learning rate = ratio × learning_rate (1 = plain LoRA).", o => o.LoraPlusRatio, "Optimization"),
        Doc("nan_policy", OptionValueKind.Choice, "On a NaN/Inf loss or gradient: stop (exit 3, step named) or skip that step.", o => o.NanPolicy, "Optimization"),
        Doc("seed", OptionValueKind.Integer, "Seed of shuffling, dropout and LoRA initialization.", o => o.Seed, "Optimization"),
        Doc("lora_rank", OptionValueKind.Integer, "LoRA rank r (as inject --rank).", o => o.LoraOrDefault.Rank, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_alpha", OptionValueKind.Number, "LoRA alpha; the branch scale is alpha/r (alpha/√r with use_rslora).", o => o.LoraOrDefault.Alpha, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_targets", OptionValueKind.List, "Module names or suffixes (as PEFT's target_modules), or all-linear (every linear layer but the output head; works on fused qkv_proj models).", o => o.LoraOrDefault.Targets, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_target_regex", OptionValueKind.Text, "A regex the whole module name must match (PEFT's target_modules as a string); replaces lora_targets.", o => o.LoraOrDefault.TargetRegex, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_exclude", OptionValueKind.List, "Module names or suffixes never adapted (PEFT's exclude_modules).", o => o.LoraOrDefault.Exclude, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_layers", OptionValueKind.Text, "Decoder layers to adapt, e.g. 0-3,7 (PEFT's layers_to_transform); all when unset.", o => o.LoraOrDefault.Layers, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_rank_pattern", OptionValueKind.List, "REGEX=R rank overrides, matched as PEFT's rank_pattern.", o => o.LoraOrDefault.RankPattern.Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Pattern}={p.Value}")), "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_alpha_pattern", OptionValueKind.List, "REGEX=A alpha overrides, matched as PEFT's alpha_pattern.", o => o.LoraOrDefault.AlphaPattern.Select(p => string.Create(CultureInfo.InvariantCulture, $"{p.Pattern}={p.Value}")), "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_init", OptionValueKind.Choice, "Initialization of A: kaimingUniform (PEFT's default), gaussian or pissa.", o => o.LoraOrDefault.Init, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("lora_dropout", OptionValueKind.Number, "Dropout on the LoRA branch input during training, in [0, 1).", o => o.LoraOrDefault.Dropout, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("use_rslora", OptionValueKind.Switch, "rsLoRA: scale alpha/√r instead of alpha/r.", o => o.LoraOrDefault.UseRsLora, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("use_dora", OptionValueKind.Switch, "DoRA: weight-decomposed LoRA.", o => o.LoraOrDefault.UseDora, "LoRA (when model is a base model; same defaults as inject)"),
        Doc("eval_steps", OptionValueKind.Integer, "Evaluate every N optimizer steps (0 = only at the start and the end).", o => o.EvalSteps, "Evaluation and checkpoints"),
        Doc("early_stopping_patience", OptionValueKind.Integer, "Stop after N evaluations without improvement (0 = off; needs eval_data).", o => o.EarlyStoppingPatience, "Evaluation and checkpoints"),
        Doc("save_steps", OptionValueKind.Integer, "Checkpoint every N optimizer steps (0 = only at the end).", o => o.SaveSteps, "Evaluation and checkpoints"),
        Doc("save_total_limit", OptionValueKind.Integer, "Keep the newest K checkpoints (0 = keep all).", o => o.SaveTotalLimit, "Evaluation and checkpoints"),
        Doc("execution_provider", OptionValueKind.Choice, "cpu, cuda or tensorrt (cuda/tensorrt need the Gpu flavour: tools/onnx-lora --gpu).", o => o.ExecutionProvider, "Runtime"),
        Doc("device_id", OptionValueKind.Integer, "GPU ordinal for cuda / tensorrt.", o => o.DeviceId, "Runtime"),
        Doc("cuda_tf32", OptionValueKind.Switch, "Let fp32 MatMuls use TF32 tensor cores on cuda/tensorrt (off: fp32 parity with the CPU).", o => o.CudaTf32, "Runtime"),
        Doc("tensorrt_cache", OptionValueKind.Text, "Folder for TensorRT engine and timing caches (tensorrt only; unset: engines are rebuilt at every start).", o => o.TensorRtCache, "Runtime"),
        Doc("intra_op_threads", OptionValueKind.Integer, "ONNX Runtime intra-op threads (0 = ORT's default: one per core).", o => o.IntraOpThreads, "Runtime"),
        Doc("memory_limit", OptionValueKind.Text, "Memory the run may use, e.g. 6GiB (unset: what the machine or cgroup has, or ONNX_LORA_MEMORY_LIMIT); none skips the check.", o => o.MemoryLimit, "Runtime"),
    ];

    /// <summary>Every key's documentation, in page order.</summary>
    public static IReadOnlyList<TrainOptionDoc> All => s_docs;

    /// <summary>The documentation of <paramref name="key"/>.</summary>
    /// <exception cref="KeyNotFoundException">The key is not documented.</exception>
    public static TrainOptionDoc Get(string key) =>
        s_docs.FirstOrDefault(d => d.Key == key) ?? throw new KeyNotFoundException($"Training key '{key}' has no documentation in TrainOptionDocs.");

    /// <summary>The text of docs/config.md.</summary>
    public static string Markdown()
    {
        var w = new StringBuilder();
        w.Append("# `onnx-lora train` configuration keys\n\n");
        w.Append("<!-- Generated by `onnx-lora train --print-config-doc` from src/Onnx.Lora.Trainer/Config/TrainOptionDocs.cs;\n");
        w.Append("     a test (TrainOptionDocsTests) fails when this page and the code disagree. Do not edit by hand. -->\n\n");
        w.Append("Every key works in a `--config` file (JSON, or YAML where nested maps flatten with `_`: `lora: {rank: 8}` is\n");
        w.Append("`lora_rank`) and as a flag (`--` + the key in kebab-case); flags override the file. Switches are flags without a\n");
        w.Append("value (`--packing`), or take `true`/`false`. Lists are comma-separated on the command line.\n");
        foreach (IGrouping<string, TrainOptionDoc> group in s_docs.GroupBy(d => d.Group))
        {
            w.Append(CultureInfo.InvariantCulture, $"\n## {group.Key}\n\n| key | flag | value | default | what it does |\n|---|---|---|---|---|\n");
            foreach (TrainOptionDoc d in group)
            {
                w.Append(CultureInfo.InvariantCulture, $"| `{d.Key}` | `{d.Flag}` | {d.Kind.ToString().ToLowerInvariant()} | {(d.Default.Length == 0 ? "—" : $"`{d.Default}`")} | {d.Description.Replace("|", "\\|", StringComparison.Ordinal)} |\n");
            }
        }

        return w.ToString();
    }

    /// <summary>A value as help and docs show it: numbers as plain decimals, lists comma-separated, enums lower-case first letter.</summary>
    public static string Format(object? value) => value switch
    {
        null => "",
        bool b => b ? "true" : "false",
        double d => NumberText.Plain(d),
        int i => i.ToString(CultureInfo.InvariantCulture),
        string s => s,
        Enum e => char.ToLowerInvariant(e.ToString()[0]) + e.ToString()[1..],
        IEnumerable<string> list => string.Join(",", list),
        _ => Convert.ToString(value, CultureInfo.InvariantCulture) ?? "",
    };

    private static TrainOptionDoc Doc(string key, OptionValueKind kind, string description, Func<TrainOptions, object?> getDefault, string group) =>
        new(key, kind, description, Format(getDefault(s_defaults)), group);
}
