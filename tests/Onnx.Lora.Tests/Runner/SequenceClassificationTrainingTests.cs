using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Runner;

/// <summary>
/// <c>onnx-lora train --task seq-cls</c> end to end: a seeded BERT classifier from <see cref="BertBuilder"/> learns a
/// rule the test generates (which animal a sentence names), from the command line; eval accuracy must rise from chance
/// to near 1 and eval loss fall; the trained model merged by <c>onnx-lora merge</c> must give the unmerged model's
/// logits through ONNX Runtime (≤ 1e-5 relative).
/// </summary>
[TestClass]
public sealed class SequenceClassificationTrainingTests
{
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    private static readonly string[] s_animals = ["cat", "dog", "bird"];
    private static readonly string[] s_names = ["Tom", "Lily", "Ben", "Sue", "Sam", "Mia"];
    private static readonly string[] s_verbs = ["saw", "liked", "found", "had", "played with"];
    private static readonly string[] s_places = ["in the park", "by the tree", "at home", "near the sea", "on the hill"];
    private static readonly string[] s_adjectives = ["big", "little", "red", "happy", "soft"];

    // Merged vs unmerged fp32 logits: the merge adds s·A·B into W once; the unmerged model adds x·A·B·s per token.
    private const double MergedRel = 1e-5;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>Rows whose label is the index of the animal the sentence names; everything else is noise.</summary>
    private static string WriteRows(TempDir dir, string name, int count, int seed)
    {
        var rng = new Random(seed);
        var lines = new List<string>();
        for (int i = 0; i < count; i++)
        {
            int label = rng.Next(s_animals.Length);
            string text = $"{s_names[rng.Next(s_names.Length)]} {s_verbs[rng.Next(s_verbs.Length)]} a {s_adjectives[rng.Next(s_adjectives.Length)]} {s_animals[label]} {s_places[rng.Next(s_places.Length)]}.";
            lines.Add(JsonSerializer.Serialize(new { text, label }));
        }

        string path = dir.File(name);
        File.WriteAllLines(path, lines);
        return path;
    }

    private static string WriteModel(TempDir dir)
    {
        using Model model = BertBuilder.Build(new BertConfig { Vocab = 512, Hidden = 32, Heads = 4, Intermediate = 64, Layers = 2, MaxPositions = 64, NumLabels = 3, Seed = 20261203 });
        string path = dir.File("bert.onnx");
        OnnxWriter.Save(model, path);
        return path;
    }

    private static string[] TrainArgs(string model, string data, string? eval, string output, params string[] extra) =>
    [
        "train", "--task", "seq-cls", "--model", model, "--tokenizer", s_tokenizer, "--data", data, .. (eval is null ? Array.Empty<string>() : ["--eval-data", eval]),
        "--output-dir", output, "--seq-length", "32", "--batch-size", "8", "--learning-rate", "5e-3", "--lr-scheduler", "constant",
        "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "all-linear", "--intra-op-threads", "1", "--seed", "20261203", "--save-steps", "0", .. extra,
    ];

    [TestMethod]
    public void Train_SeqClsOnBertFromCli_AccuracyRisesLossFallsAndMergedEqualsUnmerged()
    {
        using var dir = new TempDir();
        string model = WriteModel(dir);
        string run = dir.File("run");
        (int code, string stdout, string stderr) = CliRunner.Run(TrainArgs(model, WriteRows(dir, "train.jsonl", 192, 1), WriteRows(dir, "eval.jsonl", 48, 2), run, "--max-steps", "120", "--eval-steps", "40"));
        TestContext.WriteLine(stdout);
        Assert.AreEqual(0, code, stderr);

        var evals = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.GetProperty("kind").GetString() == "eval")
            .Select(e => (Step: e.GetProperty("step").GetInt32(), Loss: e.GetProperty("loss").GetDouble(), Accuracy: e.GetProperty("accuracy").GetDouble())).ToArray();
        Console.WriteLine("seq-cls evals (step, loss, accuracy): " + string.Join(", ", evals));
        Assert.AreEqual(0, evals[0].Step, "the first evaluation is the untrained baseline");
        Assert.AreEqual(120, evals[^1].Step);
        // Three balanced classes: chance is 1/3; the untrained head must not already know the rule.
        Assert.IsLessThan(0.6, evals[0].Accuracy, $"baseline accuracy {evals[0].Accuracy}");
        Assert.IsGreaterThanOrEqualTo(0.9, evals[^1].Accuracy, string.Join(", ", evals));
        Assert.IsLessThan(0.5 * evals[0].Loss, evals[^1].Loss, string.Join(", ", evals));
        StringAssert.Contains(stdout, "accuracy");

        foreach (string adapter in new[] { Path.Combine(run, "adapter"), Path.Combine(run, "checkpoints", "checkpoint-120") })
        {
            using JsonDocument config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(adapter, "adapter_config.json")));
            Assert.AreEqual("SEQ_CLS", config.RootElement.GetProperty("task_type").GetString(), adapter);
        }

        string trained = Path.Combine(run, "lora-trained.onnx");
        string merged = dir.File("merged.onnx");
        (code, _, stderr) = CliRunner.Run("merge", trained, "-o", merged);
        Assert.AreEqual(0, code, stderr);
        float[] unmergedLogits = Logits(trained);
        float[] mergedLogits = Logits(merged);
        float[] baseLogits = Logits(model);
        double scale = unmergedLogits.Max(MathF.Abs);
        Assert.IsLessThanOrEqualTo(MergedRel, ErrorMetrics.MaxAbsDiff(unmergedLogits, mergedLogits) / scale, "merged vs unmerged");
        Assert.IsGreaterThan(1e-2, ErrorMetrics.MaxAbsDiff(unmergedLogits, baseLogits) / scale, "training changed the logits");

        // `eval --task seq-cls` scores the shipped merged model row by row: train's last evaluation, loss and accuracy.
        (code, string json, stderr) = CliRunner.Run("eval", "--task", "seq-cls", merged, "--data", Path.Combine(dir.Path, "eval.jsonl"), "--tokenizer", s_tokenizer, "--seq-length", "32", "--json");
        Assert.AreEqual(0, code, stderr);
        JsonElement result = JsonDocument.Parse(json).RootElement;
        Assert.AreEqual(evals[^1].Accuracy, result.GetProperty("accuracy").GetDouble(), 1e-12, "accuracy");
        Assert.IsLessThanOrEqualTo(1e-5, Math.Abs(result.GetProperty("loss").GetDouble() - evals[^1].Loss) / evals[^1].Loss, $"loss {json} vs {evals[^1].Loss}");
    }

    [TestMethod]
    [DataRow("{\"text\": \"a cat\", \"label\": 3}", "label 3 is out of range")]
    [DataRow("{\"text\": \"a cat\"}", "\"label\" is missing")]
    [DataRow("{\"text\": \"a cat\", \"label\": \"positive\"}", "no config.json with label2id")]
    public void Train_SeqClsWithBadLabel_ExitsBadDataNamingFileAndLine(string badRow, string expected)
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"a dog\", \"label\": 1}", badRow]);
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(WriteModel(dir), data, null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(6, code, stderr); // ExitCodes.BadData
        StringAssert.Contains(stderr, $"{data}:2: ");
        StringAssert.Contains(stderr, expected);
        Assert.IsFalse(Directory.Exists(Path.Combine(dir.File("run"), "artifacts")), "nothing is built before the data is valid");
    }

    [TestMethod]
    public void Train_SeqClsWithLabelNames_MapsThemThroughConfigLabel2Id()
    {
        using var dir = new TempDir();
        string model = WriteModel(dir);
        File.WriteAllText(dir.File("config.json"), "{\"label2id\": {\"cat\": 0, \"dog\": 1, \"bird\": 2}}");
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"a dog\", \"label\": \"dog\"}", "{\"text\": \"a bird\", \"label\": \"bird\"}", "{\"text\": \"a cow\", \"label\": \"cow\"}"]);
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(model, data, null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(6, code, stderr); // ExitCodes.BadData
        StringAssert.Contains(stderr, $"{data}:3: label \"cow\" is not in label2id");
        Assert.IsFalse(stderr.Contains($"{data}:1:", StringComparison.Ordinal) || stderr.Contains($"{data}:2:", StringComparison.Ordinal), stderr);

        File.WriteAllLines(data, ["{\"text\": \"a dog\", \"label\": \"dog\"}", "{\"text\": \"a bird\", \"label\": \"bird\"}"]);
        (code, _, stderr) = CliRunner.Run(TrainArgs(model, data, null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(0, code, stderr);
    }

    [TestMethod]
    public void Train_SeqClsOnCausalLm_ExitsInvalidInput()
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, ["{\"text\": \"a dog\", \"label\": 1}"]);
        string model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(model, data, null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(2, code, stderr); // ExitCodes.InvalidInput: --task does not fit the model
        StringAssert.Contains(stderr, "is not a sequence classifier");
    }

    /// <summary>Logits of fixed token rows (ids below the tokenizer's 512, segment 0, no padding) through ORT.</summary>
    private static float[] Logits(string modelPath)
    {
        const int Batch = 3, Sequence = 7;
        var rng = new Random(7);
        long[] ids = [.. Enumerable.Range(0, Batch * Sequence).Select(_ => (long)rng.Next(512))];
        long[] mask = [.. Enumerable.Repeat(1L, Batch * Sequence)];
        long[] types = new long[Batch * Sequence];
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(modelPath, options);
        long[] shape = [Batch, Sequence];
        using OrtValue idsValue = OrtValue.CreateTensorValueFromMemory(ids, shape);
        using OrtValue maskValue = OrtValue.CreateTensorValueFromMemory(mask, shape);
        using OrtValue typesValue = OrtValue.CreateTensorValueFromMemory(types, shape);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(runOptions, ["input_ids", "attention_mask", "token_type_ids"], [idsValue, maskValue, typesValue], ["logits"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }
}
