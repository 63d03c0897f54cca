using System.Text.Json;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Metrics;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>trainer_state.json as transformers' TrainerState writes and reads it.</summary>
[TestClass]
public sealed class HfTrainerStateTests
{
    // The fields of transformers' TrainerState dataclass (4.41+) that load_from_json passes to its constructor:
    // any other key would fail there with "unexpected keyword argument".
    private static readonly string[] s_hfFields =
    [
        "best_metric", "best_model_checkpoint", "epoch", "eval_steps", "global_step", "is_hyper_param_search", "is_local_process_zero",
        "is_world_process_zero", "log_history", "logging_steps", "max_steps", "num_input_tokens_seen", "num_train_epochs", "save_steps",
        "stateful_callbacks", "total_flos", "train_batch_size", "trial_name", "trial_params",
    ];

    private static TrainerState State() => new()
    {
        GlobalStep = 3,
        DataPosition = new DataPosition(0, 24),
        RngState = [1, 2, 3, 4],
        ScheduleKind = "linear",
        PeakLearningRate = 2e-4,
        WarmupSteps = 0,
        TotalSteps = 300,
        TokensSeen = 4096,
        BestEvalLoss = 2.5,
    };

    private static JsonElement Written(HfRunInfo? run)
    {
        using var stream = new MemoryStream();
        HfTrainerStateFile.Write(stream, State(), run);
        return JsonDocument.Parse(stream.ToArray()).RootElement.Clone();
    }

    [TestMethod]
    public void Write_Fields_AreExactlyHfsInSortedOrder()
    {
        string[] keys = Written(null).EnumerateObject().Select(p => p.Name).ToArray();
        CollectionAssert.AreEqual(s_hfFields, keys, "sorted as json.dumps(sort_keys=True)");
    }

    [TestMethod]
    public void Write_Run_GivesStepsAndLogHistoryAsHfLogsThem()
    {
        JsonElement root = Written(new HfRunInfo
        {
            Epoch = 0.08,
            TrainBatchSize = 8,
            SaveSteps = 100,
            EvalSteps = 2,
            LogHistory =
            [
                new MetricRecord { Kind = "train", Step = 1, Loss = 6.2, LearningRate = 2e-4, GradNorm = 1.5, Epoch = 0.03 },
                new MetricRecord { Kind = "train", Step = 2, Loss = double.NaN, LearningRate = 1.9e-4, GradNorm = 1.2, Epoch = 0.05 },
                new MetricRecord { Kind = "eval", Step = 2, Loss = 5.9 },
            ],
        });
        Assert.AreEqual(3, root.GetProperty("global_step").GetInt32());
        Assert.AreEqual(300, root.GetProperty("max_steps").GetInt32());
        Assert.AreEqual(8, root.GetProperty("train_batch_size").GetInt32());
        Assert.AreEqual(4096, root.GetProperty("num_input_tokens_seen").GetInt64());
        Assert.AreEqual(2.5, root.GetProperty("best_metric").GetDouble());
        JsonElement[] log = root.GetProperty("log_history").EnumerateArray().ToArray();
        CollectionAssert.AreEqual(new[] { "epoch", "grad_norm", "learning_rate", "loss", "step" }, log[0].EnumerateObject().Select(p => p.Name).ToArray());
        Assert.AreEqual(6.2, log[0].GetProperty("loss").GetDouble());
        Assert.AreEqual(2e-4, log[0].GetProperty("learning_rate").GetDouble());
        Assert.AreEqual(JsonValueKind.Null, log[1].GetProperty("loss").ValueKind, "NaN is not JSON");
        CollectionAssert.AreEqual(new[] { "epoch", "eval_loss", "step" }, log[2].EnumerateObject().Select(p => p.Name).ToArray());
        Assert.AreEqual(0.05, log[2].GetProperty("epoch").GetDouble(), "an evaluation logs the epoch it ran at");
    }

    [TestMethod]
    public void ReadRecords_KilledLineAndLaterSteps_AreLeftOut()
    {
        using var dir = new Support.TempDir();
        string path = dir.File("metrics.jsonl");
        File.WriteAllText(path, "{\"kind\":\"train\",\"step\":1,\"loss\":2.5,\"learning_rate\":0.001}\n{\"kind\":\"train\",\"step\":2,\"loss\":2.4}\n{\"kind\":\"train\",\"st");
        IReadOnlyList<MetricRecord> records = MetricsLog.ReadRecords(path, upToStep: 1);
        Assert.AreEqual(1, records.Count);
        Assert.AreEqual(0.001, records[0].LearningRate);
    }
}
