using System.Numerics.Tensors;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Trainer.Gpu;
using Onnx.Lora.Trainer.Optim;

namespace Onnx.Lora.Trainer;

/// <summary>How a <see cref="LoraTrainingSession"/> runs.</summary>
public sealed record TrainingSessionOptions
{
    /// <summary>Execution provider of the training and evaluation sessions.</summary>
    public ExecutionProvider Provider { get; init; } = ExecutionProvider.Cpu;

    /// <summary>GPU device id for CUDA / TensorRT.</summary>
    public int DeviceId { get; init; }

    /// <summary>Intra-op threads (0 = ORT's default).</summary>
    public int IntraOpThreads { get; init; }

    /// <summary>CUDA / TensorRT settings (null = defaults: fp32 without TF32, deterministic kernels).</summary>
    public GpuProviderOptions? Gpu { get; init; }

    /// <summary>Test hook: run the GPU providers' IOBinding path (<see cref="DeviceBoundRun"/>) on the CPU provider too.</summary>
    internal bool BindOnCpu { get; init; }

    /// <summary>
    /// Whether ORT's thread pools busy-wait between ops (ORT's default is to spin). Off by default: a training step
    /// runs hundreds of small ops, and on a machine shared with other work spinning threads starve each other.
    /// </summary>
    public bool AllowSpinning { get; init; }

    /// <summary>AdamW hyper-parameters.</summary>
    public AdamWOptions AdamW { get; init; } = new();

    /// <summary>Global gradient-norm clipping threshold; 0 or less disables clipping.</summary>
    public float MaxGradientNorm { get; init; } = 1f;

    /// <summary>Initial learning rate (change it per step with <see cref="LoraTrainingSession.LearningRate"/>).</summary>
    public float LearningRate { get; init; } = 1e-3f;

    /// <summary>
    /// Per-tensor multipliers of the learning rate (tensor name → factor; absent = 1). LoRA+ sets λ for every
    /// <c>lora_B</c> tensor. Needs the vectorized optimizer.
    /// </summary>
    public IReadOnlyDictionary<string, float>? LearningRateScales { get; init; }

    /// <summary>
    /// Data parallelism: the ranks whose token-weighted gradient sums are added before each optimizer step
    /// (<see cref="LoraTrainingSession.Step(IReadOnlyList{TrainingBatch}, Span{double})"/>); null for one process.
    /// </summary>
    public Distributed.ICommunicator? Communicator { get; init; }

    /// <summary>
    /// Whether ONNX Runtime pre-packs constant MatMul weights into its GEMM layout. Off by default: the forward MatMul and
    /// the backward FusedMatMul (transB) each pack their own copy of every frozen weight (+1.1 GiB at session creation for
    /// 0.5 GiB of weights on the 135M shape), for a step-time gain within noise (BENCHMARKS.md, "Real model sizes").
    /// </summary>
    public bool PrepackWeights { get; init; }

    /// <summary>Whether ONNX Runtime plans one memory block per run (its memory pattern). Off by default; see CreateSessionOptions.</summary>
    public bool MemoryPattern { get; init; }
}

/// <summary>
/// Trains the LoRA tensors of a set of <see cref="TrainingArtifacts"/>: owns the ONNX Runtime sessions of the training
/// and evaluation models and the optimizer. Parameters and gradients live in buffers allocated once and handed to ORT
/// with <see cref="OrtValue.CreateTensorValueFromMemory{T}(T[], long[])"/>: ORT reads the parameters and writes the
/// gradients in place, so a step allocates nothing parameter-sized.
/// </summary>
public sealed partial class LoraTrainingSession : IDisposable
{
    private readonly TrainingArtifacts _artifacts;
    private readonly TrainingSessionOptions _options;
    private readonly InferenceSession _training;
    private InferenceSession? _eval;
    private readonly RunOptions _runOptions = new();
    private readonly float[][] _values;
    private readonly float[][] _gradients;
    private readonly float[][]? _accumulators;
    private readonly OrtValue[] _valueOrt;
    private readonly OrtValue[] _gradientOrt;
    private readonly float[] _loss = new float[1];
    private readonly float[] _tokens = new float[1];
    private readonly OrtValue _lossOrt;
    private readonly OrtValue _tokensOrt;
    private readonly string[] _trainingOutputNames;
    private readonly OrtValue[] _trainingOutputs;
    private readonly Dictionary<string, int> _index = new(StringComparer.Ordinal);
    private readonly AdamW _optimizer;
    private readonly BatchFeeder _trainingFeeder;
    private BatchFeeder? _evalFeeder;
    private readonly List<string> _feedNames = [];
    private readonly List<OrtValue> _feedValues = [];

    // GPU providers only (null on the CPU, whose path is unchanged): parameters bound once per change, see DeviceBoundRun.
    private readonly DeviceBoundRun? _deviceTraining;
    private DeviceBoundRun? _deviceEval;

    private LoraTrainingSession(TrainingArtifacts artifacts, TrainingSessionOptions options)
    {
        _artifacts = artifacts;
        _options = options;
        LearningRate = options.LearningRate;
        IReadOnlyList<TrainableTensor> trainable = artifacts.Trainable;
        _values = new float[trainable.Count][];
        _gradients = new float[trainable.Count][];
        // Artifacts built by this process carry their initial values; only artifacts opened from a folder are parsed.
        Model? model = Enumerable.Range(0, trainable.Count).All(i => artifacts.InitialValue(i) is not null) ? null : OnnxReader.Load(artifacts.TrainingModelPath);
        using (model)
        {
            for (int i = 0; i < trainable.Count; i++)
            {
                TrainableTensor t = trainable[i];
                _values[i] = artifacts.InitialValue(i) is { } initial ? (float[])initial.Clone()
                    : model!.Graph.Initializers.TryGetValue(t.Name, out Value? v) ? v.Initializer!.ToArray<float>()
                    : throw new LoraException($"Training model '{artifacts.TrainingModelPath}' has no initial value for '{t.Name}'.");
                _gradients[i] = new float[_values[i].Length];
                _index[t.Name] = i;
            }
        }

        _valueOrt = trainable.Select((t, i) => OrtValue.CreateTensorValueFromMemory(_values[i], t.Dims)).ToArray();
        _gradientOrt = trainable.Select((t, i) => OrtValue.CreateTensorValueFromMemory(_gradients[i], t.Dims)).ToArray();
        _lossOrt = OrtValue.CreateTensorValueFromMemory(_loss, []);
        _tokensOrt = OrtValue.CreateTensorValueFromMemory(_tokens, []);
        _trainingOutputNames = [TrainingGraph.LossOutput, TrainingGraph.TokenCountOutput, .. trainable.Select(t => TrainingGraph.GradientOutput(t.Name))];
        _trainingOutputs = [_lossOrt, _tokensOrt, .. _gradientOrt];

        using SessionOptions sessionOptions = CreateSessionOptions();
        _training = new InferenceSession(artifacts.TrainingModelPath, sessionOptions);
        _trainingFeeder = new BatchFeeder(_training, artifacts);
        _deviceTraining = CreateDeviceRun(_training, _trainingOutputNames, _trainingOutputs);

        var buffers = trainable.Select((t, i) => new ParameterBuffer(t.Name, _values[i], _gradients[i],
            options.LearningRateScales is { } scales && scales.TryGetValue(t.Name, out float f) ? f : 1f)).ToArray();
        if (options.LearningRateScales?.Keys.FirstOrDefault(k => !_index.ContainsKey(k)) is { } unknown)
        {
            throw new LoraException($"A learning-rate scale names '{unknown}', which is not a trainable tensor of '{artifacts.TrainingModelPath}'.");
        }

        _optimizer = new AdamW(buffers, options.AdamW);
        _accumulators = new float[trainable.Count][];
    }

    /// <summary>Trainable tensors, in artifact order.</summary>
    public IReadOnlyList<TrainableTensor> Parameters => _artifacts.Trainable;

    /// <summary>Learning rate of the next optimizer step (set it from a schedule before each step).</summary>
    public float LearningRate { get; set; }

    /// <summary>Optimizer steps taken.</summary>
    public long OptimizerSteps => _optimizer.StepCount;

    /// <summary>Opens a session on <paramref name="artifacts"/>.</summary>
    /// <exception cref="LoraException">The artifacts are incomplete or the execution provider is unavailable.</exception>
    public static LoraTrainingSession Create(TrainingArtifacts artifacts, TrainingSessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(artifacts);
        return new LoraTrainingSession(artifacts, options ?? new TrainingSessionOptions());
    }

    /// <summary>One optimizer step on one micro-batch.</summary>
    public TrainStepResult Step(TrainingBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return Step([batch]);
    }

    /// <summary>
    /// One optimizer step over several micro-batches (gradient accumulation): the gradient is the token-weighted mean
    /// of the micro-batch gradients, i.e. the gradient of the mean loss over all their counted tokens; then global-norm
    /// clipping and AdamW.
    /// </summary>
    public TrainStepResult Step(IReadOnlyList<TrainingBatch> microBatches)
    {
        ArgumentNullException.ThrowIfNull(microBatches);
        if (microBatches.Count == 0)
        {
            throw new ArgumentException("At least one micro-batch is needed.", nameof(microBatches));
        }

        double lossSum = 0;
        double tokenSum = 0;
        for (int k = 0; k < microBatches.Count; k++)
        {
            RunTraining(microBatches[k]);
            double tokens = _tokens[0];
            lossSum += _loss[0] * tokens;
            tokenSum += tokens;
            if (microBatches.Count > 1)
            {
                for (int i = 0; i < _gradients.Length; i++)
                {
                    float[] acc = _accumulators![i] ??= new float[_gradients[i].Length];
                    if (k == 0)
                    {
                        TensorPrimitives.Multiply(_gradients[i], (float)tokens, acc);
                    }
                    else
                    {
                        TensorPrimitives.MultiplyAdd(_gradients[i], (float)tokens, acc, acc);
                    }
                }
            }
        }

        if (microBatches.Count > 1)
        {
            float inv = tokenSum > 0 ? (float)(1 / tokenSum) : 0f;
            for (int i = 0; i < _gradients.Length; i++)
            {
                TensorPrimitives.Multiply(_accumulators![i], inv, _gradients[i]);
            }
        }

        return ClipAndApply(tokenSum > 0 ? (float)(lossSum / tokenSum) : 0f, tokenSum);
    }

    // The mean gradient is in _gradients: norm, non-finite guard, global-norm clipping, AdamW.
    private TrainStepResult ClipAndApply(float meanLoss, double tokenSum)
    {
        float norm = GradientNorm();
        if (!float.IsFinite(meanLoss) || !float.IsFinite(norm))
        {
            // NOTE: nothing is applied, so parameters and moments stay as they were; the caller stops or skips.
            return new TrainStepResult(meanLoss, (float)tokenSum, norm, Clipped: false) { NonFinite = true };
        }

        bool clipped = false;
        if (_options.MaxGradientNorm > 0 && norm > _options.MaxGradientNorm)
        {
            float scale = _options.MaxGradientNorm / (norm + 1e-6f);
            foreach (float[] g in _gradients)
            {
                TensorPrimitives.Multiply(g, scale, g);
            }

            clipped = true;
        }

        _optimizer.Step(LearningRate);
        MarkParametersChanged();
        return new TrainStepResult(meanLoss, (float)tokenSum, norm, clipped);
    }

    /// <summary>Computes loss and gradients of one batch without updating anything (gradients readable with <see cref="GetGradient"/>).</summary>
    public EvalResult ComputeGradients(TrainingBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        RunTraining(batch);
        return new EvalResult(_loss[0], _tokens[0]);
    }

    /// <summary>Loss of the evaluation model (dropout off) on <paramref name="batch"/>.</summary>
    public EvalResult Evaluate(TrainingBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        List<string> names = _feedNames;
        List<OrtValue> values = _feedValues;
        names.Clear();
        try
        {
            if (_eval is null)
            {
                // Opened on first use: a run that never evaluates does not pay its memory.
                using SessionOptions sessionOptions = CreateSessionOptions();
                _eval = new InferenceSession(_artifacts.EvalModelPath, sessionOptions);
                _evalFeeder = new BatchFeeder(_eval, _artifacts);
                _deviceEval = CreateDeviceRun(_eval, EvalOutputNames, EvalOutputValues);
            }

            _evalFeeder!.Feed(batch, names, values);
            if (_deviceEval is { } device)
            {
                device.Run(_runOptions, names, values);
            }
            else
            {
                AddParameters(names, values);
                _eval.Run(_runOptions, names, values, EvalOutputNames, EvalOutputValues);
            }
            return new EvalResult(_loss[0], _tokens[0]);
        }
        finally
        {
            BatchFeeder.DisposeOwned(values, _valueOrt);
        }
    }

    /// <summary>Current values of parameter <paramref name="name"/>.</summary>
    /// <exception cref="LoraException">No such parameter.</exception>
    public ReadOnlySpan<float> GetParameter(string name) => _values[IndexOf(name)];

    /// <summary>Gradient of parameter <paramref name="name"/> from the last step.</summary>
    public ReadOnlySpan<float> GetGradient(string name) => _gradients[IndexOf(name)];

    /// <summary>Overwrites parameter <paramref name="name"/> (e.g. when resuming from a checkpoint).</summary>
    /// <exception cref="LoraException">No such parameter, or the length differs.</exception>
    public void SetParameter(string name, ReadOnlySpan<float> values)
    {
        float[] target = _values[IndexOf(name)];
        if (values.Length != target.Length)
        {
            throw new LoraException($"Parameter '{name}' has {target.Length} elements; got {values.Length}.");
        }

        values.CopyTo(target);
        MarkParametersChanged();
    }

    /// <summary>Copies the optimizer's moments (named like the parameters) for a checkpoint.</summary>
    public OptimizerMoments ExportOptimizerMoments()
    {
        var first = new List<NamedTensor>(_values.Length);
        var second = new List<NamedTensor>(_values.Length);
        for (int i = 0; i < _values.Length; i++)
        {
            TrainableTensor t = _artifacts.Trainable[i];
            first.Add(new NamedTensor(t.Name, [.. t.Dims], _optimizer.FirstMoment(i).ToArray()));
            second.Add(new NamedTensor(t.Name, [.. t.Dims], _optimizer.SecondMoment(i).ToArray()));
        }

        return new OptimizerMoments(first, second);
    }

    /// <summary>
    /// Restores optimizer moments and the AdamW step count (bias correction) from a checkpoint, so the next step equals
    /// the one the saved run would have taken, bit for bit.
    /// </summary>
    /// <exception cref="LoraException">A tensor is missing or has another length.</exception>
    public void RestoreOptimizerState(OptimizerMoments moments, long optimizerSteps)
    {
        ArgumentNullException.ThrowIfNull(moments);
        float[][] Ordered(IReadOnlyList<NamedTensor> list, string kind)
        {
            var byName = list.ToDictionary(m => m.Name, StringComparer.Ordinal);
            return _artifacts.Trainable.Select(t => byName.TryGetValue(t.Name, out NamedTensor? m) ? m.Data
                : throw new LoraException($"The optimizer state has no {kind} for '{t.Name}'.")).ToArray();
        }

        _optimizer.RestoreState(optimizerSteps, Ordered(moments.FirstMoments, "exp_avg"), Ordered(moments.SecondMoments, "exp_avg_sq"));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        // The runner disposes the session before writing the trained model, then its using statement does again.
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (OrtValue v in _valueOrt.Concat(_gradientOrt))
        {
            v.Dispose();
        }

        _lossOrt.Dispose();
        _tokensOrt.Dispose();
        DisposeMetrics();
        _optimizer.Dispose();
        _deviceTraining?.Dispose();
        _deviceEval?.Dispose();
        _runOptions.Dispose();
        _training.Dispose();
        _eval?.Dispose();
    }

    private bool _disposed;

    private SessionOptions CreateSessionOptions()
    {
        SessionOptions options = ExecutionProviders.CreateSessionOptions(_options.Provider, _options.IntraOpThreads, _options.DeviceId, _options.AllowSpinning, _options.Gpu);
        if (!_options.PrepackWeights)
        {
            options.AddSessionConfigEntry("session.disable_prepacking", "1");
        }

        // NOTE: ORT's memory pattern allocates, from the second run on, one block sized for all planned intermediates
        // while the arena still holds what the first run allocated: the peak of a training step doubles (135M shape,
        // seq 256x2: 3.62 GiB with it, 2.25 GiB without, the same step time within noise). The arena alone reuses the
        // first run's blocks.
        options.EnableMemoryPattern = _options.MemoryPattern;

        return options;
    }

    private DeviceBoundRun? CreateDeviceRun(InferenceSession session, IReadOnlyList<string> outputNames, IReadOnlyList<OrtValue> outputs) =>
        _options.Provider == ExecutionProvider.Cpu && !_options.BindOnCpu ? null
            : new DeviceBoundRun(session, _artifacts.Trainable.Select(t => t.Name).ToArray(), _valueOrt, outputNames, outputs);

    private void MarkParametersChanged()
    {
        _deviceTraining?.MarkParametersChanged();
        _deviceEval?.MarkParametersChanged();
    }

    private void RunTraining(TrainingBatch batch)
    {
        List<string> names = _feedNames;
        List<OrtValue> values = _feedValues;
        names.Clear();
        try
        {
            _trainingFeeder.Feed(batch, names, values);
            if (_deviceTraining is { } device)
            {
                device.Run(_runOptions, names, values);
                return;
            }

            AddParameters(names, values);
            _training.Run(_runOptions, names, values, _trainingOutputNames, _trainingOutputs);
        }
        finally
        {
            BatchFeeder.DisposeOwned(values, _valueOrt);
        }
    }

    private void AddParameters(List<string> names, List<OrtValue> values)
    {
        for (int i = 0; i < _valueOrt.Length; i++)
        {
            names.Add(_artifacts.Trainable[i].Name);
            values.Add(_valueOrt[i]);
        }
    }

    private float GradientNorm()
    {
        double sum = 0;
        foreach (float[] g in _gradients)
        {
            sum += TensorPrimitives.SumOfSquares<float>(g);
        }

        return (float)Math.Sqrt(sum);
    }

    private int IndexOf(string name) =>
        _index.TryGetValue(name, out int i) ? i : throw new LoraException($"'{name}' is not a trainable tensor of this session (it has {_index.Count}).");
}
