using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tools;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.TorchRef;

/// <summary>
/// <c>startup --model LORA.onnx --vocab V [--threads 1 --runs 3 --seq 64 --batch 1]</c>: where our start-up goes
/// (issue 13), in one process: the one read of the model, the artifact build from the loaded model, and the creation
/// of the training session under each ORT graph optimization level, plus an optimized model saved by ORT
/// (<c>SessionOptions.OptimizedModelFilePath</c>, extended level, weights to an external file) and reopened with
/// optimizations off. Each session then runs one training step on the same seeded batch: its time, and its loss
/// against the default level's (a cached model must give the same loss).
/// </summary>
internal static class StartupBench
{
    private static readonly (string Name, GraphOptimizationLevel Level)[] s_levels =
    [
        ("all (default)", GraphOptimizationLevel.ORT_ENABLE_ALL),
        ("extended", GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
        ("basic", GraphOptimizationLevel.ORT_ENABLE_BASIC),
        ("disabled", GraphOptimizationLevel.ORT_DISABLE_ALL),
    ];

    public static int Run(ToolArgs a)
    {
        var inv = CultureInfo.InvariantCulture;
        string path = a.Str("model");
        int threads = a.Int("threads", 1), runs = a.Int("runs", 3), seq = a.Int("seq", 64), batch = a.Int("batch", 1), vocab = a.Int("vocab", 0);
        if (vocab <= 0)
        {
            throw new ArgumentException("--vocab is required.");
        }

        using var folder = new TempFolder();
        var clock = Stopwatch.StartNew();
        using Model model = OnnxReader.Load(path);
        double read = clock.Elapsed.TotalSeconds;
        clock.Restart();
        TrainingArtifacts artifacts = TrainingArtifacts.Build(model, path, folder.Path);
        double build = clock.Elapsed.TotalSeconds;
        Console.WriteLine(string.Create(inv, $"read model {read:F2} s; build artifacts (from the loaded model) {build:F2} s; {ProcessStats.Snapshot()}"));

        float[][] initial = [.. artifacts.Trainable.Select(t => model.Graph.Initializers[t.Name].Initializer!.ToArray<float>())];
        TokenBatch tokens = TokenBatch.Create(7, batch, seq, vocab, padRows: false);
        var create = s_levels.ToDictionary(l => l.Name, _ => new List<double>());
        var step = s_levels.ToDictionary(l => l.Name, _ => new List<double>());
        var loss = new Dictionary<string, float>();
        for (int r = 0; r < runs; r++)
        {
            foreach ((string name, GraphOptimizationLevel level) in s_levels)
            {
                using SessionOptions options = Options(threads, level);
                clock.Restart();
                using var session = new InferenceSession(artifacts.TrainingModelPath, options);
                create[name].Add(clock.Elapsed.TotalSeconds);
                (float l, double s) = Step(session, artifacts, initial, tokens);
                step[name].Add(s);
                loss[name] = l;
            }
        }

        // An optimized model saved beside the artifacts (extended level: no layout-specific NCHWc ops; prepacking is
        // off, so nothing machine-specific is baked in), then reopened as a later run would, with optimizations off.
        string optimized = Path.Combine(folder.Path, "training.optimized.onnx");
        var save = new List<double>();
        var reopen = new List<double>();
        var reopenStep = new List<double>();
        float reopenLoss = float.NaN;
        for (int r = 0; r < runs; r++)
        {
            using (SessionOptions options = Options(threads, GraphOptimizationLevel.ORT_ENABLE_EXTENDED))
            {
                options.OptimizedModelFilePath = optimized;
                options.AddSessionConfigEntry("session.optimized_model_external_initializers_file_name", "training.optimized.data");
                options.AddSessionConfigEntry("session.optimized_model_external_initializers_min_size_in_bytes", "1024");
                clock.Restart();
                using var session = new InferenceSession(artifacts.TrainingModelPath, options);
                save.Add(clock.Elapsed.TotalSeconds);
            }

            using (SessionOptions options = Options(threads, GraphOptimizationLevel.ORT_DISABLE_ALL))
            {
                clock.Restart();
                using var session = new InferenceSession(optimized, options);
                reopen.Add(clock.Elapsed.TotalSeconds);
                (reopenLoss, double s) = Step(session, artifacts, initial, tokens);
                reopenStep.Add(s);
            }
        }

        Console.WriteLine(string.Create(inv, $"training session, {threads} thread(s), prepacking off, medians of {runs} (seq {seq} x batch {batch}):"));
        Console.WriteLine("| session | creation s | first step s | loss |");
        Console.WriteLine("|---|---|---|---|");
        foreach ((string name, _) in s_levels)
        {
            Console.WriteLine(string.Create(inv, $"| {name} | {Verbs.Median(create[name]):F2} | {Verbs.Median(step[name]):F2} | {loss[name]:F6} |"));
        }

        Console.WriteLine(string.Create(inv, $"| extended + save optimized model | {Verbs.Median(save):F2} | — | — |"));
        Console.WriteLine(string.Create(inv, $"| reopen saved optimized model, optimizations off | {Verbs.Median(reopen):F2} | {Verbs.Median(reopenStep):F2} | {reopenLoss:F6} |"));
        Console.WriteLine(string.Create(inv, $"optimized model on disk: {new FileInfo(optimized).Length / 1048576.0:F1} MiB + {new FileInfo(Path.Combine(folder.Path, "training.optimized.data")).Length / 1048576.0:F1} MiB of weights; {ProcessStats.Snapshot()}"));
        return 0;
    }

    private static SessionOptions Options(int threads, GraphOptimizationLevel level)
    {
        // As LoraTrainingSession opens the training model (ExecutionProviders.CreateSessionOptions + its settings).
        var options = new SessionOptions { GraphOptimizationLevel = level, IntraOpNumThreads = threads, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR, EnableMemoryPattern = false };
        options.AddSessionConfigEntry("session.disable_prepacking", "1");
        options.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
        return options;
    }

    private static (float Loss, double Seconds) Step(InferenceSession session, TrainingArtifacts artifacts, float[][] initial, TokenBatch b)
    {
        long[] shape = [b.BatchSize, b.SeqLen];
        float[] loss = new float[1];
        var inputs = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(b.Ids, shape),
            OrtValue.CreateTensorValueFromMemory(b.Mask, shape),
            OrtValue.CreateTensorValueFromMemory(b.Labels, shape),
        };
        var outputs = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(loss, []) };
        for (int i = 0; i < initial.Length; i++)
        {
            inputs.Add(OrtValue.CreateTensorValueFromMemory((float[])initial[i].Clone(), artifacts.Trainable[i].Dims));
            outputs.Add(OrtValue.CreateTensorValueFromMemory(new float[initial[i].Length], artifacts.Trainable[i].Dims));
        }

        string[] inputNames = ["input_ids", "attention_mask", "labels", .. artifacts.Trainable.Select(t => t.Name)];
        string[] outputNames = [TrainingGraph.LossOutput, .. artifacts.Trainable.Select(t => TrainingGraph.GradientOutput(t.Name))];
        try
        {
            using var runOptions = new RunOptions();
            var clock = Stopwatch.StartNew();
            session.Run(runOptions, inputNames, inputs, outputNames, outputs);
            return (loss[0], clock.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (OrtValue v in inputs.Concat(outputs))
            {
                v.Dispose();
            }
        }
    }
}
