using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Optim;

namespace Onnx.Lora.TorchRef;

/// <summary>Our ONNX trainer as the second peer: TrainingArtifacts.Build + LoraTrainingSession, exactly as the product trains.</summary>
internal static class OursPeer
{
    /// <summary>
    /// Our trainer on <paramref name="loraModelPath"/>. With <paramref name="profilePrefix"/> the same training artifact
    /// and the trainer's AdamW run in an ORT session that has profiling on (LoraTrainingSession does not expose its
    /// SessionOptions), with the trainer's session settings (ORT_ENABLE_ALL, the same thread count).
    /// </summary>
    public static ITrainingPeer Create(string loraModelPath, AdamWSettings adamw, int threads, string? profilePrefix = null, bool spin = false, bool prepack = false, bool recompute = false) =>
        profilePrefix is null ? new SessionPeer(loraModelPath, adamw, threads, spin, prepack, recompute) : new ProfiledArtifactPeer(loraModelPath, adamw, threads, profilePrefix, spin, recompute);

    /// <summary>Ends ORT profiling of <paramref name="peer"/> and returns the profile file, or null when it is not profiled.</summary>
    public static string? EndProfiling(ITrainingPeer peer) => (peer as ProfiledArtifactPeer)?.EndProfiling();

    internal static AdamWOptions Options(AdamWSettings s) =>
        new() { Beta1 = (float)s.Beta1, Beta2 = (float)s.Beta2, Epsilon = (float)s.Eps, WeightDecay = (float)s.WeightDecay };

    internal static TrainingBatch Batch(TokenBatch b) =>
        new() { InputIds = b.Ids, AttentionMask = b.Mask, Labels = b.Labels, BatchSize = b.BatchSize, SequenceLength = b.SeqLen };
}

/// <summary>The product path: LoraTrainingSession (gradient clipping off, as torch.optim.AdamW alone).</summary>
internal sealed class SessionPeer : ITrainingPeer
{
    private readonly TempFolder _folder = new();
    private readonly LoraTrainingSession _session;
    private readonly Dictionary<TokenBatch, TrainingBatch> _batches = [];

    public SessionPeer(string loraModelPath, AdamWSettings adamw, int threads, bool spin = false, bool prepack = false, bool recompute = false)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraModelPath, _folder.Path, new TrainingArtifactsOptions { RecomputeActivations = recompute });
        Console.WriteLine($"after artifacts ({clock.Elapsed.TotalSeconds:F1} s): {ProcessStats.Snapshot()}");
        clock.Restart();
        _session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions
        {
            IntraOpThreads = threads,
            AllowSpinning = spin,
            AdamW = OursPeer.Options(adamw),
            LearningRate = (float)adamw.Lr,
            MaxGradientNorm = 0,
            PrepackWeights = prepack,
        });
        Console.WriteLine($"after session ({clock.Elapsed.TotalSeconds:F1} s): {ProcessStats.Snapshot()}");
    }

    public string Name => "ours";


    public (float Loss, Dictionary<string, float[]> Gradients) LossAndGradients(TokenBatch batch)
    {
        float loss = _session.ComputeGradients(Get(batch)).Loss;
        return (loss, _session.Parameters.ToDictionary(p => p.Name, p => _session.GetGradient(p.Name).ToArray(), StringComparer.Ordinal));
    }

    public float Step(TokenBatch batch) => _session.Step(Get(batch)).Loss;

    public Dictionary<string, float[]> Parameters() =>
        _session.Parameters.ToDictionary(p => p.Name, p => _session.GetParameter(p.Name).ToArray(), StringComparer.Ordinal);

    public void Dispose()
    {
        _session.Dispose();
        _folder.Dispose();
    }

    private TrainingBatch Get(TokenBatch b)
    {
        if (!_batches.TryGetValue(b, out TrainingBatch? t))
        {
            _batches[b] = t = OursPeer.Batch(b);
        }

        return t;
    }
}

/// <summary>The trainer's artifact and AdamW in a profiled ORT session, for the per-op-type time breakdown.</summary>
internal sealed class ProfiledArtifactPeer : ITrainingPeer
{
    private readonly TempFolder _folder = new();
    private readonly InferenceSession _session;
    private readonly RunOptions _runOptions = new();
    private readonly ParameterBuffer[] _buffers;
    private readonly long[][] _dims;
    private readonly AdamW _adamw;
    private readonly float _lr;
    private readonly string[] _inputNames;
    private readonly string[] _outputNames;
    private readonly float[] _loss = new float[1];

    public ProfiledArtifactPeer(string loraModelPath, AdamWSettings adamw, int threads, string profilePrefix, bool spin, bool recompute = false)
    {
        TrainingArtifacts artifacts = TrainingArtifacts.Build(loraModelPath, _folder.Path, new TrainingArtifactsOptions { RecomputeActivations = recompute });
        using (Onnx.Lora.Ir.Model lora = Onnx.Lora.Ir.Serialization.OnnxReader.Load(loraModelPath))
        {
            _buffers = artifacts.Trainable.Select(t => lora.Graph.Initializers[t.Name].Initializer!.ToFloat32())
                .Select((v, i) => new ParameterBuffer(artifacts.Trainable[i].Name, v, new float[v.Length])).ToArray();
        }

        _dims = artifacts.Trainable.Select(t => t.Dims).ToArray();
        _adamw = new AdamW(_buffers, OursPeer.Options(adamw));
        _lr = (float)adamw.Lr;
        using var options = new SessionOptions
        {
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            IntraOpNumThreads = threads,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            EnableProfiling = true,
            ProfileOutputPathPrefix = profilePrefix,
            EnableMemoryPattern = false, // as LoraTrainingSession runs it, so the profile's arena figures are the product's
        };
        options.AddSessionConfigEntry("session.intra_op.allow_spinning", spin ? "1" : "0");
        options.AddSessionConfigEntry("session.disable_prepacking", "1");
        _session = new InferenceSession(artifacts.TrainingModelPath, options);
        _inputNames = ["input_ids", "attention_mask", "labels", .. _buffers.Select(p => p.Name)];
        _outputNames = [TrainingGraph.LossOutput, .. _buffers.Select(p => TrainingGraph.GradientOutput(p.Name))];
    }

    public string Name => "ours-profiled";

    public (float Loss, Dictionary<string, float[]> Gradients) LossAndGradients(TokenBatch batch)
    {
        Run(batch);
        return (_loss[0], _buffers.ToDictionary(p => p.Name, p => (float[])p.Gradients.Clone(), StringComparer.Ordinal));
    }

    public float Step(TokenBatch batch)
    {
        Run(batch);
        _adamw.Step(_lr);
        return _loss[0];
    }

    public Dictionary<string, float[]> Parameters() => _buffers.ToDictionary(p => p.Name, p => (float[])p.Values.Clone(), StringComparer.Ordinal);

    public string EndProfiling() => _session.EndProfiling();

    public void Dispose()
    {
        _session.Dispose();
        _runOptions.Dispose();
        _adamw.Dispose();
        _folder.Dispose();
    }

    private void Run(TokenBatch batch)
    {
        long[] shape = [batch.BatchSize, batch.SeqLen];
        var inputs = new List<OrtValue>
        {
            OrtValue.CreateTensorValueFromMemory(batch.Ids, shape),
            OrtValue.CreateTensorValueFromMemory(batch.Mask, shape),
            OrtValue.CreateTensorValueFromMemory(batch.Labels, shape),
        };
        var outputs = new List<OrtValue> { OrtValue.CreateTensorValueFromMemory(_loss, []) };
        for (int i = 0; i < _buffers.Length; i++)
        {
            inputs.Add(OrtValue.CreateTensorValueFromMemory(_buffers[i].Values, _dims[i]));
            outputs.Add(OrtValue.CreateTensorValueFromMemory(_buffers[i].Gradients, _dims[i]));
        }

        try
        {
            _session.Run(_runOptions, _inputNames, inputs, _outputNames, outputs);
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
