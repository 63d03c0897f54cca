using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Formats;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Gpu;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora gradients LORA_MODEL --vocab-size V -o grads.safetensors [--steps N] [--execution-provider cuda]</c>: the
/// loss and every LoRA gradient of one seeded random batch, written as safetensors (key <c>loss</c> plus one key per
/// trainable tensor) so that two providers can be compared tensor by tensor; with <c>--steps</c> it also times training
/// steps. stdout gets one JSON line (loss, tokens, step time, tokens/s).
/// </summary>
internal sealed class GradientsCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("MODEL") { Description = "A LoRA model (written by inject or train)." };
    private static readonly Option<string?> s_output = new("--output", "-o") { Description = "Safetensors file for the loss and the gradients." };
    private static readonly Option<int> s_vocab = new("--vocab-size") { Description = "Vocabulary size of the model (ids are drawn from [0, V)).", Required = true };
    private static readonly Option<int> s_batch = new("--batch-size") { Description = "Rows per batch.", DefaultValueFactory = _ => 2 };
    private static readonly Option<int> s_seqLength = new("--seq-length") { Description = "Tokens per row.", DefaultValueFactory = _ => 64 };
    private static readonly Option<int> s_seed = new("--seed") { Description = "Seed of the batch and of the lora_B values.", DefaultValueFactory = _ => 1234 };
    private static readonly Option<float> s_bStd = new("--lora-b-std") { Description = "Seeded normal values of this std in every lora_B (0 keeps the model's; B = 0 makes A's gradients zero).", DefaultValueFactory = _ => 0.02f };
    private static readonly Option<int> s_steps = new("--steps") { Description = "Timed optimizer steps after the gradient run.", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> s_warmup = new("--warmup") { Description = "Untimed steps before the timed ones.", DefaultValueFactory = _ => 2 };
    private static readonly Option<string?> s_artifacts = new("--artifacts") { Description = "Folder of the training artifacts: reused when it holds them, else built there and kept (default: a temporary folder)." };
    private static readonly Option<string> s_provider = new("--execution-provider") { Description = "cpu (default), cuda or tensorrt (the GPU ones need the Gpu flavour: tools/onnx-lora --gpu).", DefaultValueFactory = _ => "cpu" };
    private static readonly Option<int> s_deviceId = new("--device-id") { Description = "GPU ordinal for cuda / tensorrt.", DefaultValueFactory = _ => 0 };
    private static readonly Option<int> s_threads = new("--threads") { Description = "ONNX Runtime intra-op threads (0 = its default).", DefaultValueFactory = _ => 0 };
    private static readonly Option<bool> s_tf32 = new("--cuda-tf32") { Description = "Let fp32 MatMuls use TF32 tensor cores (off: fp32 parity with the CPU)." };
    private static readonly Option<string?> s_trtCache = new("--tensorrt-cache") { Description = "Folder for TensorRT engine and timing caches." };

    public GradientsCommand() : base("gradients", "Loss and LoRA gradients of one seeded batch (compare execution providers), and optionally the time of training steps.")
    {
        Arguments.Add(s_model);
        Options.Add(s_output);
        Options.Add(s_vocab);
        Options.Add(s_batch);
        Options.Add(s_seqLength);
        Options.Add(s_seed);
        Options.Add(s_bStd);
        Options.Add(s_steps);
        Options.Add(s_warmup);
        Options.Add(s_artifacts);
        Options.Add(s_provider);
        Options.Add(s_deviceId);
        Options.Add(s_threads);
        Options.Add(s_tf32);
        Options.Add(s_trtCache);
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        var run = new FixedBatchRunOptions
        {
            VocabSize = Positive(parse.GetValue(s_vocab), "--vocab-size"),
            BatchSize = Positive(parse.GetValue(s_batch), "--batch-size"),
            SequenceLength = Positive(parse.GetValue(s_seqLength), "--seq-length"),
            Seed = parse.GetValue(s_seed),
            LoraBStd = parse.GetValue(s_bStd) is >= 0 and var std && float.IsFinite(std) ? std : throw new UsageException("--lora-b-std must be a finite number ≥ 0."),
            Steps = parse.GetValue(s_steps) is >= 0 and var steps ? steps : throw new UsageException("--steps must be ≥ 0."),
            WarmupSteps = parse.GetValue(s_warmup) is >= 0 and var warmup ? warmup : throw new UsageException("--warmup must be ≥ 0."),
        };
        string? target = parse.GetValue(s_output);
        if (target is null && run.Steps == 0)
        {
            throw new UsageException("Nothing to do: give --output for the gradients and/or --steps to time training steps.");
        }

        ExecutionProvider provider = ExecutionProviders.Parse(parse.GetValue(s_provider)!);
        var sessionOptions = new TrainingSessionOptions
        {
            Provider = provider,
            DeviceId = parse.GetValue(s_deviceId),
            IntraOpThreads = parse.GetValue(s_threads),
            Gpu = new GpuProviderOptions { UseTf32 = parse.GetValue(s_tf32), TensorRtCacheFolder = parse.GetValue(s_trtCache) },
        };
        // Fail on a missing provider before the artifacts (a full copy of the weights) are written.
        ExecutionProviders.CreateSessionOptions(provider, sessionOptions.IntraOpThreads, sessionOptions.DeviceId, gpu: sessionOptions.Gpu).Dispose();

        string? kept = parse.GetValue(s_artifacts);
        string folder = kept ?? Path.Combine(Path.GetTempPath(), "onnx-lora-gradients-" + Guid.NewGuid().ToString("N"));
        try
        {
            long setup = System.Diagnostics.Stopwatch.GetTimestamp();
            TrainingArtifacts artifacts = File.Exists(Path.Combine(folder, TrainingArtifacts.DescriptionFile))
                ? TrainingArtifacts.Load(folder)
                : TrainingArtifacts.Build(parse.GetValue(s_model)!, folder);
            using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, sessionOptions);
            double setupSeconds = System.Diagnostics.Stopwatch.GetElapsedTime(setup).TotalSeconds;
            FixedBatchResult result = FixedBatchRun.Run(session, run);
            if (target is not null)
            {
                SafetensorsWriter.Write(target,
                    [SafetensorsTensor.FromFloats("loss", [1], [result.Loss]), .. result.Gradients.Select(g => SafetensorsTensor.FromFloats(g.Name, g.Shape, g.Data))],
                    new Dictionary<string, string> { ["provider"] = provider.ToString(), ["seed"] = run.Seed.ToString(CultureInfo.InvariantCulture) });
            }

            double median = result.MedianStepMilliseconds;
            output.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["provider"] = provider.ToString().ToLowerInvariant(),
                ["loss"] = result.Loss,
                ["tokens"] = result.Tokens,
                ["trainable_tensors"] = result.Gradients.Count,
                ["setup_s"] = Math.Round(setupSeconds, 3),
                ["steps"] = result.StepMilliseconds.Count,
                ["step_ms_median"] = double.IsNaN(median) ? null : Math.Round(median, 3),
                ["tokens_per_s"] = double.IsNaN(median) ? null : Math.Round(run.BatchSize * run.SequenceLength / (median / 1000), 1),
                ["output"] = target,
            }));
            return Task.FromResult(ExitCodes.Success);
        }
        finally
        {
            if (kept is null && Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }

    private static int Positive(int value, string name) => value > 0 ? value : throw new UsageException($"{name} must be > 0; got {value}.");
}
