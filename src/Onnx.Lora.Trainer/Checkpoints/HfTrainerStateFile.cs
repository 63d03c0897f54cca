using System.Text.Json;
using Onnx.Lora.Trainer.Metrics;

namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>What Hugging Face's trainer_state.json records about a run beyond our resume state.</summary>
public sealed record HfRunInfo
{
    /// <summary>Epochs done so far (fractional), as HF's <c>epoch</c>.</summary>
    public double Epoch { get; init; }

    /// <summary>HF's <c>num_train_epochs</c>: the epochs the run was set for (with max_steps, the epochs those steps span).</summary>
    public int NumTrainEpochs { get; init; } = 1;

    /// <summary>Rows per micro-batch (<c>train_batch_size</c>).</summary>
    public int TrainBatchSize { get; init; }

    /// <summary>Checkpoint cadence (<c>save_steps</c>).</summary>
    public int SaveSteps { get; init; }

    /// <summary>Evaluation cadence (<c>eval_steps</c>).</summary>
    public int EvalSteps { get; init; }

    /// <summary>Steps between logged train records (<c>logging_steps</c>); every step is logged.</summary>
    public int LoggingSteps { get; init; } = 1;

    /// <summary>The run's metric records up to the checkpoint's step, oldest first (<c>log_history</c>).</summary>
    public IReadOnlyList<MetricRecord> LogHistory { get; init; } = [];
}

/// <summary>
/// Writes <c>trainer_state.json</c> as transformers' TrainerState.save_to_json does (sorted snake_case keys, only the
/// fields its dataclass declares, so <c>TrainerState.load_from_json</c> reads it): global_step, max_steps, epoch,
/// log_history entries {epoch, grad_norm, learning_rate, loss, step} and {epoch, eval_loss, step}. Our own resume state
/// lives beside it in <see cref="CheckpointStore.ResumeStateFile"/>.
/// </summary>
public static class HfTrainerStateFile
{
    /// <summary>Writes the file for <paramref name="state"/> (and <paramref name="run"/>, when known) to <paramref name="stream"/>.</summary>
    public static void Write(Stream stream, TrainerState state, HfRunInfo? run)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(state);
        run ??= new HfRunInfo();
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        w.WriteStartObject();
        Number(w, "best_metric", state.BestEvalLoss);
        w.WriteNull("best_model_checkpoint");
        w.WriteNumber("epoch", run.Epoch);
        w.WriteNumber("eval_steps", run.EvalSteps);
        w.WriteNumber("global_step", state.GlobalStep);
        w.WriteBoolean("is_hyper_param_search", false);
        w.WriteBoolean("is_local_process_zero", true);
        w.WriteBoolean("is_world_process_zero", true);
        w.WriteStartArray("log_history");
        double epoch = 0;
        foreach (MetricRecord r in run.LogHistory)
        {
            // Eval records carry no epoch of their own: HF logs the epoch reached when the evaluation ran.
            epoch = r.Epoch ?? epoch;
            w.WriteStartObject();
            w.WriteNumber("epoch", epoch);
            if (r.Kind == "eval")
            {
                Number(w, "eval_loss", r.Loss);
            }
            else
            {
                Number(w, "grad_norm", r.GradNorm);
                Number(w, "learning_rate", r.LearningRate);
                Number(w, "loss", r.Loss);
            }

            w.WriteNumber("step", r.Step);
            w.WriteEndObject();
        }

        w.WriteEndArray();
        w.WriteNumber("logging_steps", run.LoggingSteps);
        w.WriteNumber("max_steps", state.TotalSteps);
        w.WriteNumber("num_input_tokens_seen", state.TokensSeen);
        w.WriteNumber("num_train_epochs", run.NumTrainEpochs);
        w.WriteNumber("save_steps", run.SaveSteps);
        w.WriteStartObject("stateful_callbacks");
        w.WriteEndObject();
        // HF counts FLOPs only for its own PreTrainedModel classes and writes 0 for any other model, as here.
        w.WriteNumber("total_flos", 0);
        w.WriteNumber("train_batch_size", run.TrainBatchSize);
        w.WriteNull("trial_name");
        w.WriteNull("trial_params");
        w.WriteEndObject();
    }

    // JSON has no NaN: a non-finite loss is null (Python reads None), not a string that breaks a float column.
    private static void Number(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v && double.IsFinite(v))
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteNull(name);
        }
    }
}
