using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Data;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Runner;

/// <summary>
/// <c>onnx-lora train --task seq2seq-lm</c> end to end on an Optimum-layout export (encoder_model.onnx +
/// decoder_model.onnx + config.json) of a seeded BART from <see cref="BartBuilder"/>: the untrained eval loss equals a
/// cross-entropy computed here from ONNX Runtime running the two base files one after the other with Hugging Face's
/// shifted decoder input (independent of the joined graph and its loss); eval loss falls; the one adapter holds both
/// stacks under PEFT's names; merged into each part by <c>onnx-lora merge</c>, the two files give the trained model's
/// logits (≤ 1e-5 relative).
/// </summary>
[TestClass]
public sealed class Seq2SeqTrainingTests
{
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    private static readonly string[] s_animals = ["cat", "dog", "bird", "fish"];
    private static readonly string[] s_names = ["Tom", "Lily", "Ben", "Sue", "Sam", "Mia"];
    private static readonly string[] s_places = ["in the park", "by the tree", "at home", "near the sea", "on the hill"];

    private const long DecoderStart = 2;
    private const long Pad = 0;

    // Merged vs unmerged fp32 logits (as the seq-cls test): s·A·B folded into W once vs added per token.
    private const double MergedRel = 1e-5;

    // The runner's eval loss (float32 graph, batched with padding) vs the double cross-entropy of unpadded ORT runs.
    private const double LossRel = 1e-5;

    public TestContext TestContext { get; set; } = null!;

    /// <summary>Rows whose target names the source's animal and then its person: only the encoder can tell which.</summary>
    private static string WriteRows(TempDir dir, string name, int count, int seed)
    {
        var rng = new Random(seed);
        var lines = new List<string>();
        for (int i = 0; i < count; i++)
        {
            string who = s_names[rng.Next(s_names.Length)];
            string animal = s_animals[rng.Next(s_animals.Length)];
            string source = $"{who} saw a {animal} {s_places[rng.Next(s_places.Length)]}.";
            lines.Add(JsonSerializer.Serialize(new { source, target = $"{animal} {who}" }));
        }

        string path = dir.File(name);
        File.WriteAllLines(path, lines);
        return path;
    }

    /// <summary>The export folder as Optimum leaves it.</summary>
    private static string WriteExport(TempDir dir, bool config = true)
    {
        string folder = dir.File("bart");
        Directory.CreateDirectory(folder);
        using EncoderDecoderModels models = BartBuilder.Build(new BartConfig { Vocab = 512, Hidden = 32, Heads = 4, Intermediate = 64, Layers = 2, MaxPositions = 64, Seed = 20261203 });
        OnnxWriter.Save(models.Encoder, Path.Combine(folder, EncoderDecoderModels.EncoderFile));
        OnnxWriter.Save(models.Decoder, Path.Combine(folder, EncoderDecoderModels.DecoderFile));
        if (config)
        {
            File.WriteAllText(Path.Combine(folder, "config.json"), $"{{\"model_type\": \"bart\", \"decoder_start_token_id\": {DecoderStart}, \"pad_token_id\": {Pad}}}");
        }

        return folder;
    }

    private static string[] TrainArgs(string model, string data, string? eval, string output, params string[] extra) =>
    [
        "train", "--task", "seq2seq-lm", "--model", model, "--tokenizer", s_tokenizer, "--data", data, .. (eval is null ? Array.Empty<string>() : ["--eval-data", eval]),
        "--output-dir", output, "--seq-length", "32", "--batch-size", "8", "--learning-rate", "1e-2", "--lr-scheduler", "constant",
        "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "all-linear", "--intra-op-threads", "1", "--seed", "20261203", "--save-steps", "0", .. extra,
    ];

    [TestMethod]
    public void Train_Seq2SeqOnBartExportFromCli_EvalLossFallsAndMergedPartsEqualTrainedModel()
    {
        using var dir = new TempDir();
        string export = WriteExport(dir);
        string eval = WriteRows(dir, "eval.jsonl", 24, 2);
        string run = dir.File("run");
        (int code, string stdout, string stderr) = CliRunner.Run(TrainArgs(export, WriteRows(dir, "train.jsonl", 192, 1), eval, run, "--max-steps", "120", "--eval-steps", "60"));
        TestContext.WriteLine(stdout);
        Assert.AreEqual(0, code, stderr);
        StringAssert.Contains(stdout, "encoder-decoder");

        double[] evals = File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.GetProperty("kind").GetString() == "eval").Select(e => e.GetProperty("loss").GetDouble()).ToArray();
        Console.WriteLine("seq2seq eval losses: " + string.Join(", ", evals));

        // Step 0 (B = 0) is the base model: teacher forcing as HF computes it, from the two base files run apart.
        double reference = ReferenceLoss(export, eval);
        Assert.IsLessThanOrEqualTo(LossRel, Math.Abs(evals[0] - reference) / reference, $"eval loss at step 0 {evals[0]} vs reference {reference}");
        Assert.IsLessThan(0.6 * evals[0], evals[^1], string.Join(", ", evals));

        string adapter = Path.Combine(run, "adapter");
        using (JsonDocument config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(adapter, "adapter_config.json"))))
        {
            Assert.AreEqual("SEQ_2_SEQ_LM", config.RootElement.GetProperty("task_type").GetString());
        }

        string names = File.ReadAllText(Path.Combine(adapter, "adapter_model.safetensors"), System.Text.Encoding.Latin1);
        foreach (string tensor in new[] { "base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.encoder.layers.1.fc2.lora_B.weight", "base_model.model.model.decoder.layers.1.encoder_attn.v_proj.lora_B.weight" })
        {
            StringAssert.Contains(names, tensor);
        }

        // Each part of the export gets the same adapter; each takes its own stack's modules.
        string merged = dir.File("merged");
        Directory.CreateDirectory(merged);
        foreach (string part in new[] { EncoderDecoderModels.EncoderFile, EncoderDecoderModels.DecoderFile })
        {
            (code, string mergeOut, stderr) = CliRunner.Run("merge", Path.Combine(export, part), "--adapter", adapter, "-o", Path.Combine(merged, part));
            Assert.AreEqual(0, code, stderr);
            StringAssert.Contains(mergeOut, "belong to the other part");
        }

        Batch b = Batch.Padded();
        float[] trained = RunJoined(Path.Combine(run, "lora-trained.onnx"), b);
        float[] mergedLogits = RunParts(merged, b);
        float[] baseLogits = RunParts(export, b);
        double scale = trained.Max(MathF.Abs);
        Assert.IsLessThanOrEqualTo(MergedRel, ErrorMetrics.MaxAbsDiff(trained, mergedLogits) / scale, "merged parts vs trained joined model");
        Assert.IsGreaterThan(1e-2, ErrorMetrics.MaxAbsDiff(trained, baseLogits) / scale, "training changed the logits");

        // The encoder's LoRA matters on its own: the merged encoder with the base decoder differs from the base.
        float[] encoderOnly = RunParts(merged, b, decoderFolder: export);
        Assert.IsGreaterThan(1e-3, ErrorMetrics.MaxAbsDiff(encoderOnly, baseLogits) / scale, "the encoder's modules were trained and merged");

        // `eval` scores the shipped files (each row alone, encoder then decoder): the base export gives the untrained
        // eval loss, the merged export the trained one.
        File.Copy(Path.Combine(export, "config.json"), Path.Combine(merged, "config.json"));
        foreach ((string folder, double expected) in new[] { (export, evals[0]), (merged, evals[^1]) })
        {
            (code, string json, stderr) = CliRunner.Run("eval", "--task", "seq2seq-lm", folder, "--data", eval, "--tokenizer", s_tokenizer, "--seq-length", "32", "--json");
            Assert.AreEqual(0, code, stderr);
            double loss = JsonDocument.Parse(json).RootElement.GetProperty("loss").GetDouble();
            Assert.IsLessThanOrEqualTo(LossRel, Math.Abs(loss - expected) / expected, $"eval {folder}: {loss} vs training's {expected}");
        }
    }

    [TestMethod]
    public void Train_Seq2SeqInjectedModelAtBZero_EqualsEncoderThenDecoder()
    {
        using var dir = new TempDir();
        string export = WriteExport(dir);
        string run = dir.File("run");
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(export, WriteRows(dir, "train.jsonl", 8, 3), null, run, "--max-steps", "1"));
        Assert.AreEqual(0, code, stderr);
        Batch b = Batch.Padded();
        string loraModel = Path.Combine(run, "artifacts", "model.lora.onnx");
        using (Model model = OnnxReader.Load(loraModel))
        {
            // Both files hold the shared token embedding: the joined graph holds it once.
            Assert.IsTrue(model.Graph.Initializers.Contains("model.shared.weight"));
            Assert.IsFalse(model.Graph.Initializers.Values.Any(v => v.Name.StartsWith("chained/", StringComparison.Ordinal)), "no initializer copied twice");
        }

        float[] joined = RunJoined(loraModel, b);
        float[] parts = RunParts(export, b);
        // Same kernels on the same values; only ORT's fusion choices across the joined graph may differ.
        Assert.IsLessThanOrEqualTo(1e-6, ErrorMetrics.MaxAbsDiff(joined, parts) / parts.Max(MathF.Abs), "B = 0: the joined LoRA graph is the two parts");
    }

    [TestMethod]
    public void Train_Seq2SeqWithGradientCheckpointing_SaysNoLayerRecomputesAndTrainsAlike()
    {
        // BART's linears are MatMul + Add: the bias gradient is reshaped to an in-layer value's shape, so no gradient
        // reaches a layer's backward from above without passing through the layer; the run says so and trains as without.
        using var dir = new TempDir();
        string export = WriteExport(dir);
        string rows = WriteRows(dir, "train.jsonl", 32, 5);
        var losses = new List<double[]>();
        foreach (bool checkpointing in new[] { false, true })
        {
            string run = dir.File(checkpointing ? "on" : "off");
            (int code, string stdout, string stderr) = CliRunner.Run(TrainArgs(export, rows, null, run, checkpointing ? ["--max-steps", "4", "--gradient-checkpointing"] : ["--max-steps", "4"]));
            Assert.AreEqual(0, code, stderr);
            Assert.AreEqual(checkpointing, stdout.Contains("gradient checkpointing: no layer of this graph could be set to recompute", StringComparison.Ordinal), stdout);
            losses.Add([.. File.ReadLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonDocument.Parse(l).RootElement).Select(e => e.GetProperty("loss").GetDouble())]);
        }

        CollectionAssert.AreEqual(losses[0], losses[1]);
    }

    [TestMethod]
    [DataRow("{\"source\": \"a cat\"}", "\"target\" is missing")]
    [DataRow("{\"source\": \"\", \"target\": \"a cat\"}", "\"source\" is empty")]
    [DataRow("[1, 2]", "expected a JSON object with \"source\" and \"target\"")]
    public void Train_Seq2SeqWithBadRow_ExitsBadDataNamingFileAndLine(string badRow, string expected)
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, ["{\"source\": \"a dog\", \"target\": \"dog\"}", badRow]);
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(WriteExport(dir), data, null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(6, code, stderr); // ExitCodes.BadData
        StringAssert.Contains(stderr, $"{data}:2: ");
        StringAssert.Contains(stderr, expected);
        Assert.IsFalse(Directory.Exists(Path.Combine(dir.File("run"), "artifacts")), "nothing is built before the data is valid");
    }

    [TestMethod]
    public void Train_Seq2SeqWithoutDecoderStartId_ExitsBadModelNamingTheKey()
    {
        using var dir = new TempDir();
        string export = WriteExport(dir, config: false);
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(export, WriteRows(dir, "train.jsonl", 4, 1), null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(4, code, stderr); // ExitCodes.BadModel: the export's config is part of the model
        StringAssert.Contains(stderr, "decoder_start_token_id");
        Assert.IsFalse(stderr.Contains("   at ", StringComparison.Ordinal), stderr);
    }

    [TestMethod]
    public void Train_Seq2SeqOnCausalLm_ExitsInvalidInputNamingTheParts()
    {
        using var dir = new TempDir();
        string model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(model, WriteRows(dir, "train.jsonl", 4, 1), null, dir.File("run"), "--max-steps", "1"));
        Assert.AreEqual(2, code, stderr); // ExitCodes.InvalidInput
        StringAssert.Contains(stderr, "encoder_model.onnx and decoder_model.onnx");
    }

    [TestMethod]
    public void Train_Seq2SeqExportWithMergedDecoderOnly_TrainsItsBranchWithoutPast()
    {
        using var dir = new TempDir();
        string plain = WriteExport(dir);
        string export = dir.File("merged-export");
        Directory.CreateDirectory(export);
        File.Copy(Path.Combine(plain, EncoderDecoderModels.EncoderFile), Path.Combine(export, EncoderDecoderModels.EncoderFile));
        File.Copy(Path.Combine(plain, "config.json"), Path.Combine(export, "config.json"));
        string merged = Path.Combine(export, "decoder_model_merged.onnx");
        using (Model decoder = OnnxReader.Load(Path.Combine(plain, EncoderDecoderModels.DecoderFile)))
        {
            MergedDecoder.Wrap(decoder);
            OnnxWriter.Save(decoder, merged);
        }

        Batch b = Batch.Padded();
        float[] parts = RunParts(plain, b);
        Assert.AreEqual(0f, ErrorMetrics.MaxAbsDiff(MergedDecoder.Run(Path.Combine(plain, EncoderDecoderModels.EncoderFile), merged, b), parts), "the merged file's branch without past is the decoder");

        string run = dir.File("run");
        string rows = WriteRows(dir, "train.jsonl", 8, 3);
        (int code, _, string stderr) = CliRunner.Run(TrainArgs(export, rows, null, run, "--max-steps", "2"));
        Assert.AreEqual(0, code, stderr);

        // eval feeds the merged file use_cache_branch = false and empty past: the plain decoder's loss.
        double[] losses = new double[2];
        foreach ((string folder, int i) in new[] { (plain, 0), (export, 1) })
        {
            (code, string json, stderr) = CliRunner.Run("eval", "--task", "seq2seq-lm", folder, "--data", rows, "--tokenizer", s_tokenizer, "--seq-length", "32", "--json");
            Assert.AreEqual(0, code, stderr);
            losses[i] = JsonDocument.Parse(json).RootElement.GetProperty("loss").GetDouble();
        }

        Assert.AreEqual(losses[0], losses[1], "eval of the merged-decoder export");
        string loraModel = Path.Combine(run, "artifacts", "model.lora.onnx");
        using (Model model = OnnxReader.Load(loraModel))
        {
            Assert.IsFalse(model.Graph.AllNodes().Any(n => n.Is("If")), "the cache branch is gone");
            CollectionAssert.AreEquivalent(new[] { "input_ids", "attention_mask", "decoder_input_ids" }, model.Graph.Inputs.Select(v => v.Name).ToArray());
        }

        Assert.IsLessThanOrEqualTo(1e-6, ErrorMetrics.MaxAbsDiff(RunJoined(loraModel, b), parts) / parts.Max(MathF.Abs), "B = 0: the joined graph is the encoder then the decoder");
        Assert.IsTrue(File.Exists(Path.Combine(run, "adapter", "adapter_model.safetensors")));
    }

    /// <summary>Token-weighted mean cross-entropy of every eval row, each run alone (no padding) through the base parts.</summary>
    private static double ReferenceLoss(string export, string evalPath)
    {
        TextTokenizer tokenizer = TextTokenizer.Load(s_tokenizer);
        List<TokenizedExample> rows = Seq2SeqDataset.Load(evalPath, tokenizer, new DatasetOptions { MaxTokens = 32, ModelVocabSize = 512 }, out _);
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var encoder = new InferenceSession(Path.Combine(export, EncoderDecoderModels.EncoderFile), options);
        using var decoder = new InferenceSession(Path.Combine(export, EncoderDecoderModels.DecoderFile), options);
        double sum = 0;
        long count = 0;
        foreach (TokenizedExample row in rows)
        {
            long[] source = [.. row.InputIds.Take(row.AttendedTokens!.Value).Select(i => (long)i)];
            long[] labels = [.. row.Labels.TakeWhile(l => l != TokenizedExample.IgnoreIndex).Select(l => (long)l)];
            long[] decoderIds = [DecoderStart, .. labels[..^1]]; // HF's shift_tokens_right
            float[] logits = RunParts(encoder, decoder, new Batch(1, source.Length, labels.Length, source, [.. source.Select(_ => 1L)], decoderIds));
            int vocab = logits.Length / labels.Length;
            for (int t = 0; t < labels.Length; t++)
            {
                ReadOnlySpan<float> z = logits.AsSpan(t * vocab, vocab);
                double max = z.ToArray().Max();
                double logSum = Math.Log(z.ToArray().Sum(v => Math.Exp(v - max))) + max;
                sum += logSum - z[(int)labels[t]];
                count++;
            }
        }

        return sum / count;
    }

    private static float[] RunParts(string folder, Batch b, string? decoderFolder = null)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var encoder = new InferenceSession(Path.Combine(folder, EncoderDecoderModels.EncoderFile), options);
        using var decoder = new InferenceSession(Path.Combine(decoderFolder ?? folder, EncoderDecoderModels.DecoderFile), options);
        return RunParts(encoder, decoder, b);
    }

    private static float[] RunParts(InferenceSession encoder, InferenceSession decoder, Batch b)
    {
        using var run = new RunOptions();
        using OrtValue ids = OrtValue.CreateTensorValueFromMemory(b.Source, [b.Rows, b.SourceLength]);
        using OrtValue mask = OrtValue.CreateTensorValueFromMemory(b.Mask, [b.Rows, b.SourceLength]);
        using IDisposableReadOnlyCollection<OrtValue> states = encoder.Run(run, ["input_ids", "attention_mask"], [ids, mask], ["last_hidden_state"]);
        using OrtValue decoderIds = OrtValue.CreateTensorValueFromMemory(b.DecoderIds, [b.Rows, b.DecoderLength]);
        using IDisposableReadOnlyCollection<OrtValue> logits = decoder.Run(run, ["input_ids", "encoder_attention_mask", "encoder_hidden_states"], [decoderIds, mask, states[0]], ["logits"]);
        return logits[0].GetTensorDataAsSpan<float>().ToArray();
    }

    private static float[] RunJoined(string path, Batch b)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(path, options);
        using var run = new RunOptions();
        using OrtValue ids = OrtValue.CreateTensorValueFromMemory(b.Source, [b.Rows, b.SourceLength]);
        using OrtValue mask = OrtValue.CreateTensorValueFromMemory(b.Mask, [b.Rows, b.SourceLength]);
        using OrtValue decoderIds = OrtValue.CreateTensorValueFromMemory(b.DecoderIds, [b.Rows, b.DecoderLength]);
        using IDisposableReadOnlyCollection<OrtValue> logits = session.Run(run, ["input_ids", "attention_mask", "decoder_input_ids"], [ids, mask, decoderIds], ["logits"]);
        return logits[0].GetTensorDataAsSpan<float>().ToArray();
    }

    private sealed record Batch(int Rows, int SourceLength, int DecoderLength, long[] Source, long[] Mask, long[] DecoderIds)
    {
        /// <summary>Two rows, the second's source padded (attention 0 on its last three positions).</summary>
        public static Batch Padded()
        {
            var rng = new Random(9);
            const int Rows = 2, SourceLength = 9, DecoderLength = 5;
            long[] source = [.. Enumerable.Range(0, Rows * SourceLength).Select(_ => (long)rng.Next(3, 512))];
            long[] mask = [.. Enumerable.Range(0, Rows * SourceLength).Select(i => i >= SourceLength + 6 ? 0L : 1L)];
            long[] decoderIds = [.. Enumerable.Range(0, Rows * DecoderLength).Select(i => i % DecoderLength == 0 ? DecoderStart : rng.Next(3, 512))];
            return new Batch(Rows, SourceLength, DecoderLength, source, mask, decoderIds);
        }
    }

    /// <summary>
    /// Optimum's decoder_model_merged.onnx layout: the decoder behind <c>If(use_cache_branch)</c>, its graph the
    /// branch without past, the other branch reading a past input (here a stand-in computation of the same type).
    /// </summary>
    private static class MergedDecoder
    {
        public static void Wrap(Model decoder)
        {
            Onnx.Lora.Ir.Graph main = decoder.Graph;
            Value logits = main.Outputs.Single(o => o.Name == "logits");
            var withoutPast = new Onnx.Lora.Ir.Graph("decoder_without_past");
            var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
            foreach (Node n in main.Nodes)
            {
                var copy = new Node(n.Domain, n.OpType, n.Inputs.Select(v => v is null ? null : map.GetValueOrDefault(v, v)), n.Outputs.Select(o => "else/" + o.Name), n.Attributes.Values, "else/" + n.Name);
                for (int i = 0; i < n.Outputs.Count; i++)
                {
                    copy.Outputs[i].Type = n.Outputs[i].Type;
                    map[n.Outputs[i]] = copy.Outputs[i];
                }

                withoutPast.Add(copy);
            }

            withoutPast.Outputs.Add(map[logits]);
            main.Outputs.Clear();
            foreach (Node n in main.Nodes.Reverse().ToArray())
            {
                main.Remove(n, safe: false);
            }

            Value useCache = new("use_cache_branch", Onnx.Lora.Ir.ValueType.Tensor(DataType.Bool, new Shape([new Dim(1)])));
            Value past = new("past_key_values.0.decoder.key", Onnx.Lora.Ir.ValueType.Tensor(DataType.Float, new Shape([new Dim("batch_size"), new Dim(4), new Dim("past_sequence_length"), new Dim(8)])));
            main.Inputs.Add(useCache);
            main.Inputs.Add(past);
            var withPast = new Onnx.Lora.Ir.Graph("decoder_with_past");
            Value pastSum = withPast.Add(new Node("", "ReduceSum", [past], ["then/past_sum"], [Attr.Int("keepdims", 0)], "then/ReduceSum")).Outputs[0];
            Value negated = withPast.Add(new Node("", "Neg", [main.Inputs.Single(v => v.Name == "encoder_hidden_states")], ["then/neg"], null, "then/Neg")).Outputs[0];
            Value stand = withPast.Add(new Node("", "Add", [negated, pastSum], ["then/logits"], null, "then/Add")).Outputs[0];
            stand.Type = logits.Type;
            withPast.Outputs.Add(stand);
            Node ifNode = main.Add(new Node("", "If", [useCache], ["logits"], [Attr.Graph("then_branch", withPast), Attr.Graph("else_branch", withoutPast)], "optimum::if"));
            ifNode.Outputs[0].Type = logits.Type;
            main.Outputs.Add(ifNode.Outputs[0]);
        }

        /// <summary>Logits of the encoder then the merged decoder with use_cache_branch = false and an empty past.</summary>
        public static float[] Run(string encoderPath, string mergedPath, Batch b)
        {
            using var options = new SessionOptions { IntraOpNumThreads = 1 };
            using var encoder = new InferenceSession(encoderPath, options);
            using var decoder = new InferenceSession(mergedPath, options);
            using var run = new RunOptions();
            using OrtValue ids = OrtValue.CreateTensorValueFromMemory(b.Source, [b.Rows, b.SourceLength]);
            using OrtValue mask = OrtValue.CreateTensorValueFromMemory(b.Mask, [b.Rows, b.SourceLength]);
            using IDisposableReadOnlyCollection<OrtValue> states = encoder.Run(run, ["input_ids", "attention_mask"], [ids, mask], ["last_hidden_state"]);
            using OrtValue decoderIds = OrtValue.CreateTensorValueFromMemory(b.DecoderIds, [b.Rows, b.DecoderLength]);
            using OrtValue useCache = OrtValue.CreateTensorValueFromMemory(new[] { false }, [1]);
            using OrtValue past = OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [b.Rows, 4, 0, 8]);
            using IDisposableReadOnlyCollection<OrtValue> logits = decoder.Run(run, ["input_ids", "encoder_attention_mask", "encoder_hidden_states", "use_cache_branch", "past_key_values.0.decoder.key"],
                [decoderIds, mask, states[0], useCache, past], ["logits"]);
            return logits[0].GetTensorDataAsSpan<float>().ToArray();
        }
    }
}
