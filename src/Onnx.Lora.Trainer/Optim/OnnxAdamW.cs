using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Trainer.Optim;

/// <summary>
/// AdamW as an ONNX model run by ONNX Runtime: one graph updates every parameter (inputs θᵢ, gᵢ, mᵢ, vᵢ and the step
/// scalars; outputs θᵢ', mᵢ', vᵢ'). Outputs go to preallocated buffers bound once; the new values are copied back
/// into the parameter and moment buffers (ORT does not promise in-place runs).
/// </summary>
public sealed class OnnxAdamW : IParameterOptimizer
{
    private readonly AdamWOptions _options;
    private readonly IReadOnlyList<ParameterBuffer> _parameters;
    private readonly InferenceSession _session;
    private readonly RunOptions _runOptions = new();
    private readonly float[][] _m;
    private readonly float[][] _v;
    private readonly float[][] _outTheta;
    private readonly float[][] _outM;
    private readonly float[][] _outV;
    private readonly float[] _scalars = new float[4];
    private readonly List<OrtValue> _inputs = [];
    private readonly List<OrtValue> _outputs = [];
    private readonly string[] _inputNames;
    private readonly string[] _outputNames;

    /// <summary>Creates the optimizer, building its ONNX model in memory.</summary>
    public OnnxAdamW(IReadOnlyList<ParameterBuffer> parameters, AdamWOptions options, SessionOptions? sessionOptions = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(options);
        _parameters = parameters;
        _options = options;
        if (parameters.FirstOrDefault(p => p.LearningRateScale != 1f) is { } scaled)
        {
            // The graph shares one set of step scalars; per-tensor rates (LoRA+) are the C# optimizer's job.
            throw new LoraException($"The ONNX AdamW applies one learning rate to all tensors; '{scaled.Name}' asks for ×{scaled.LearningRateScale} (LoRA+). Use the vectorized optimizer.");
        }

        _m = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _v = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _outTheta = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _outM = parameters.Select(p => new float[p.Values.Length]).ToArray();
        _outV = parameters.Select(p => new float[p.Values.Length]).ToArray();
        byte[] model = BuildModel(parameters.Select(p => p.Values.Length).ToArray(), options);
        _session = sessionOptions is null ? new InferenceSession(model) : new InferenceSession(model, sessionOptions);

        var inputNames = new List<string> { "decay", "step_size", "inv_sqrt_bias2" };
        _inputs.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _scalars.AsMemory(0, 1), []));
        _inputs.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _scalars.AsMemory(1, 1), []));
        _inputs.Add(OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, _scalars.AsMemory(2, 1), []));
        var outputNames = new List<string>();
        for (int i = 0; i < parameters.Count; i++)
        {
            long[] shape = [parameters[i].Values.Length];
            inputNames.AddRange([$"theta{i}", $"grad{i}", $"m{i}", $"v{i}"]);
            _inputs.Add(OrtValue.CreateTensorValueFromMemory(parameters[i].Values, shape));
            _inputs.Add(OrtValue.CreateTensorValueFromMemory(parameters[i].Gradients, shape));
            _inputs.Add(OrtValue.CreateTensorValueFromMemory(_m[i], shape));
            _inputs.Add(OrtValue.CreateTensorValueFromMemory(_v[i], shape));
            outputNames.AddRange([$"theta{i}_out", $"m{i}_out", $"v{i}_out"]);
            _outputs.Add(OrtValue.CreateTensorValueFromMemory(_outTheta[i], shape));
            _outputs.Add(OrtValue.CreateTensorValueFromMemory(_outM[i], shape));
            _outputs.Add(OrtValue.CreateTensorValueFromMemory(_outV[i], shape));
        }

        _inputNames = [.. inputNames];
        _outputNames = [.. outputNames];
    }

    /// <inheritdoc />
    public long StepCount { get; private set; }

    /// <inheritdoc />
    public ReadOnlySpan<float> FirstMoment(int index) => _m[index];

    /// <inheritdoc />
    public ReadOnlySpan<float> SecondMoment(int index) => _v[index];

    /// <inheritdoc />
    public void RestoreState(long stepCount, IReadOnlyList<float[]> firstMoments, IReadOnlyList<float[]> secondMoments)
    {
        OptimizerState.Restore(_parameters, _m, _v, stepCount, firstMoments, secondMoments);
        StepCount = stepCount;
    }

    /// <inheritdoc />
    public void Step(float learningRate)
    {
        StepCount++;
        AdamWStepScalars s = AdamWStepScalars.For(_options, StepCount, learningRate);
        _scalars[0] = s.Decay;
        _scalars[1] = s.StepSize;
        _scalars[2] = s.InvSqrtBias2;
        _session.Run(_runOptions, _inputNames, _inputs, _outputNames, _outputs);
        for (int i = 0; i < _parameters.Count; i++)
        {
            _outTheta[i].CopyTo(_parameters[i].Values, 0);
            _outM[i].CopyTo(_m[i], 0);
            _outV[i].CopyTo(_v[i], 0);
        }
    }

    /// <summary>The optimizer graph for parameters of the given lengths (flattened to 1-D).</summary>
    internal static byte[] BuildModel(int[] lengths, AdamWOptions o)
    {
        var b = new GraphBuilder("adamw", 17);
        Value decay = b.Input("decay", DataType.Float);
        Value stepSize = b.Input("step_size", DataType.Float);
        Value invSqrtBias2 = b.Input("inv_sqrt_bias2", DataType.Float);
        Value beta1 = b.Scalar("beta1", o.Beta1);
        Value oneMinusBeta1 = b.Scalar("one_minus_beta1", 1 - o.Beta1);
        Value beta2 = b.Scalar("beta2", o.Beta2);
        Value oneMinusBeta2 = b.Scalar("one_minus_beta2", 1 - o.Beta2);
        Value eps = b.Scalar("epsilon", o.Epsilon);
        for (int i = 0; i < lengths.Length; i++)
        {
            Value theta = b.Input($"theta{i}", DataType.Float, lengths[i]);
            Value g = b.Input($"grad{i}", DataType.Float, lengths[i]);
            Value m = b.Input($"m{i}", DataType.Float, lengths[i]);
            Value v = b.Input($"v{i}", DataType.Float, lengths[i]);
            Value m2 = b.Add(b.Mul(m, beta1), b.Mul(g, oneMinusBeta1));
            Value v2 = b.Add(b.Mul(v, beta2), b.Mul(b.Mul(g, g), oneMinusBeta2));
            Value denom = b.Add(b.Mul(b.Op("Sqrt", [v2]), invSqrtBias2), eps);
            Value theta2 = b.Sub(b.Mul(theta, decay), b.Mul(b.Div(m2, denom), stepSize));
            b.Output(b.Identity(theta2), $"theta{i}_out", DataType.Float, lengths[i]);
            b.Output(b.Identity(m2), $"m{i}_out", DataType.Float, lengths[i]);
            b.Output(b.Identity(v2), $"v{i}_out", DataType.Float, lengths[i]);
        }

        return OnnxWriter.ToBytes(b.Model);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (OrtValue v in _inputs.Concat(_outputs))
        {
            v.Dispose();
        }

        _runOptions.Dispose();
        _session.Dispose();
    }
}
