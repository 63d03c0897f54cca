using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Schedules;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Runner;

[TestClass]
public sealed class TrainOptionsTests
{
    private static readonly KeyValuePair<string, string>[] s_required =
    [
        new("model", "m.onnx"), new("data", "d.jsonl"), new("tokenizer", "tok.model"),
    ];

    [TestMethod]
    public void Load_YamlWithNestedLoraAndFlagOverride_FlagsWin()
    {
        using var temp = new TempDir();
        string path = temp.File("train.yaml");
        File.WriteAllText(path, """
            model: base.onnx
            data: train.jsonl
            eval_data: eval.jsonl
            tokenizer: tok512.model
            learning_rate: 1e-3
            lr_scheduler: cosine
            warmup_ratio: 0.1
            early_stopping_patience: 2
            lora:
              rank: 4
              alpha: 8
              targets: [q_proj, k_proj, v_proj]
            """);
        TrainOptions o = TrainOptionsLoader.Load(path, [new("learning-rate", "5e-4"), new("seed", "7"), new("packing", "true")]);

        Assert.AreEqual("base.onnx", o.Model);
        Assert.AreEqual(5e-4, o.LearningRate);
        Assert.AreEqual(ScheduleKind.Cosine, o.Schedule);
        Assert.AreEqual(0.1, o.WarmupRatio);
        Assert.AreEqual(4, o.LoraRank);
        Assert.AreEqual(8.0, o.LoraAlpha);
        CollectionAssert.AreEqual(new[] { "q_proj", "k_proj", "v_proj" }, o.LoraTargets.ToArray());
        Assert.AreEqual(7, o.Seed);
        Assert.IsTrue(o.Packing);
    }

    [TestMethod]
    public void Load_Json_ReadsEveryType()
    {
        using var temp = new TempDir();
        string path = temp.File("train.json");
        File.WriteAllText(path, """{"model": "m.onnx", "data": "d.jsonl", "tokenizer": "t", "max_steps": 50, "use_rslora": true, "lora_targets": ["a", "b"], "execution_provider": "CUDA", "device_id": 1}""");
        TrainOptions o = TrainOptionsLoader.Load(path);
        Assert.AreEqual(50, o.MaxSteps);
        Assert.IsTrue(o.UseRsLora);
        Assert.AreEqual("cuda", o.ExecutionProvider);
        Assert.AreEqual(1, o.DeviceId);
        Assert.AreEqual(50, o.TotalOptimizerSteps(rowsPerEpoch: 1000));
    }

    [TestMethod]
    public void Load_WrongTypeInYaml_NamesFileLineAndKey()
    {
        using var temp = new TempDir();
        string path = temp.File("train.yaml");
        File.WriteAllText(path, "model: m.onnx\nbatch_size: eight\n");
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(path));
        StringAssert.Contains(e.Message, $"{path}:2: key 'batch_size': expected an integer, found 'eight'");
    }

    [TestMethod]
    public void Load_UnknownKey_SuggestsTheNearOne()
    {
        using var temp = new TempDir();
        string path = temp.File("train.json");
        File.WriteAllText(path, """{"learning_rate_x": 1}""");
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(path));
        StringAssert.Contains(e.Message, "unknown key 'learning_rate_x'");
        StringAssert.Contains(e.Message, "learning_rate");
        StringAssert.Contains(e.Message, path);
    }

    [TestMethod]
    public void Load_BadFlag_NamesTheFlag()
    {
        var e = Assert.ThrowsExactly<ConfigException>(() => TrainOptionsLoader.Load(null, [.. s_required, new("lr_scheduler", "exponential")]));
        StringAssert.Contains(e.Message, "command line: --lr-scheduler: expected one of constant, linear, cosine, found 'exponential'");
    }

    [TestMethod]
    public void Validate_SeveralBadValues_ListsThemAll()
    {
        var o = new TrainOptions { Model = "m", Data = "d", Tokenizer = "t", BatchSize = 0, LoraDropout = 1.0, WarmupRatio = 0.2, WarmupSteps = 3, ExecutionProvider = "rocm", EarlyStoppingPatience = 2 };
        var e = Assert.ThrowsExactly<ConfigException>(() => o.Validate("x.yaml"));
        foreach (string key in new[] { "'batch_size'", "'lora_dropout'", "'warmup_ratio'", "'execution_provider'", "'early_stopping_patience'", "x.yaml" })
        {
            StringAssert.Contains(e.Message, key);
        }
    }

    [TestMethod]
    public void TotalOptimizerSteps_FromEpochs_IsCeilOfMicroBatchesOverAccumulation()
    {
        var o = new TrainOptions { Model = "m", Data = "d", Tokenizer = "t", BatchSize = 4, GradientAccumulationSteps = 3, Epochs = 2 };
        // 10 rows → 3 micro-batches per epoch; 2 epochs → 6 micro-batches → 2 optimizer steps.
        Assert.AreEqual(2, o.TotalOptimizerSteps(10));
        LearningRateSchedule s = (o with { WarmupRatio = 0.5 }).CreateSchedule(10);
        Assert.AreEqual(5, s.WarmupSteps);
    }
}
