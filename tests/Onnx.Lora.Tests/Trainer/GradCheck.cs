using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Finite-difference gradient check of a tiny graph: the graph's output Y is turned into the scalar loss
/// L = Σ Y·R (R a fixed random tensor, so every element of dL/dY differs) or L = ½ΣY² when Y has symbolic dims,
/// the autodiff builds the training graph, ORT runs it, and each sampled parameter entry's analytic gradient is
/// compared with the central difference (L(θ+h) − L(θ−h)) / 2h computed by ORT on the same training graph.
/// </summary>
internal sealed class GradCheck
{
    private readonly Random _rng;
    private readonly List<string> _trainable = [];
    private readonly Dictionary<string, long[]> _parameterDims = [];
    private readonly Dictionary<string, (double[] Data, long[] Dims)> _feeds = [];
    private readonly Dictionary<string, (long[] Data, long[] Dims)> _intFeeds = [];

    public GradCheck(DataType type = DataType.Double, long opset = 17, int seed = 20261125)
    {
        Type = type;
        B = new GraphBuilder("gradcheck", opset);
        _rng = new Random(seed);
    }

    public GraphBuilder B { get; }

    public DataType Type { get; }

    /// <summary>A trainable initializer with values uniform in [lo, hi].</summary>
    public Value Param(string name, long[] dims, double lo = -1, double hi = 1)
    {
        _trainable.Add(name);
        return B.Initializer(MakeTensor(name, dims, lo, hi));
    }

    /// <summary>A frozen random initializer.</summary>
    public Value Const(string name, long[] dims, double lo = -1, double hi = 1) => B.Initializer(MakeTensor(name, dims, lo, hi));

    /// <summary>A graph input (possibly with symbolic dims) fed with random data of <paramref name="actual"/> dims.</summary>
    public Value Input(string name, Dim[] dims, long[] actual, double lo = -1, double hi = 1)
    {
        long n = actual.Aggregate(1L, (a, d) => a * d);
        _feeds[name] = (Enumerable.Range(0, (int)n).Select(_ => lo + ((hi - lo) * _rng.NextDouble())).ToArray(), actual);
        return B.Input(name, Type, dims);
    }

    /// <summary>An int64 graph input with given data.</summary>
    public Value IntInput(string name, Dim[] dims, long[] data, long[] actual)
    {
        _intFeeds[name] = (data, actual);
        return B.Input(name, DataType.Int64, dims);
    }

    /// <summary>Typed scalar constant.</summary>
    public Value Scalar(string name, double v) => B.Initializer(MakeTensorFrom(name, [], [v]));

    /// <summary>
    /// Runs the check and returns the largest relative error |a − n| / max(|a|, |n|, floor) over sampled entries.
    /// </summary>
    public double Check(Value y, long[]? yDims, double step, int samplesPerParameter = 6, double floor = 1e-3)
    {
        Value loss;
        if (yDims is not null)
        {
            Value r = Const("loss_weights", yDims);
            loss = B.Op("ReduceSum", [B.Mul(y, r)], [Attr.Int("keepdims", 0)]);
        }
        else
        {
            loss = B.Op("ReduceSum", [B.Mul(B.Mul(y, y), Scalar("half", 0.5))], [Attr.Int("keepdims", 0)]);
        }

        Model model = B.Model;
        var initial = _trainable.ToDictionary(n => n, n => ToDoubles(model.Graph.Initializers[n].Initializer!));
        foreach (string n in _trainable)
        {
            _parameterDims[n] = model.Graph.Initializers[n].Initializer!.Dims.ToArray();
        }

        TrainingGraph.MakeTraining(model, loss, null, _trainable);
        byte[] bytes = OnnxWriter.ToBytes(model);
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        using var session = new InferenceSession(bytes, options);

        var values = initial.ToDictionary(p => p.Key, p => (double[])p.Value.Clone());
        Dictionary<string, double[]> grads = Run(session, values, withGradients: true).Gradients;
        double worst = 0;
        foreach (string name in _trainable)
        {
            double[] v = values[name];
            Assert.AreEqual(v.Length, grads[name].Length, $"gradient of '{name}' has the wrong size");
            for (int s = 0; s < Math.Min(samplesPerParameter, v.Length); s++)
            {
                int i = samplesPerParameter >= v.Length ? s : _rng.Next(v.Length);
                double original = v[i];
                v[i] = original + step;
                double plus = Run(session, values, false).Loss;
                v[i] = original - step;
                double minus = Run(session, values, false).Loss;
                v[i] = original;
                double numeric = (plus - minus) / (2 * step);
                double analytic = grads[name][i];
                double rel = Math.Abs(analytic - numeric) / Math.Max(floor, Math.Max(Math.Abs(analytic), Math.Abs(numeric)));
                worst = Math.Max(worst, rel);
            }
        }

        return worst;
    }

    private (double Loss, Dictionary<string, double[]> Gradients) Run(InferenceSession session, Dictionary<string, double[]> parameters, bool withGradients)
    {
        var names = new List<string>();
        var values = new List<OrtValue>();
        try
        {
            foreach ((string name, double[] data) in parameters)
            {
                names.Add(name);
                values.Add(Create(data, _parameterDims[name]));
            }

            foreach ((string name, (double[] data, long[] shape)) in _feeds)
            {
                names.Add(name);
                values.Add(Create(data, shape));
            }

            foreach ((string name, (long[] data, long[] shape)) in _intFeeds)
            {
                names.Add(name);
                values.Add(OrtValue.CreateTensorValueFromMemory(data, shape));
            }

            string[] outputs = withGradients ? [TrainingGraph.LossOutput, .. parameters.Keys.Select(TrainingGraph.GradientOutput)] : [TrainingGraph.LossOutput];
            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, names, values, outputs);
            double loss = Read(results[0])[0];
            var grads = new Dictionary<string, double[]>();
            if (withGradients)
            {
                int k = 1;
                foreach (string name in parameters.Keys)
                {
                    grads[name] = Read(results[k++]);
                }
            }

            return (loss, grads);
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }
    }

    private OrtValue Create(double[] data, long[] shape) => Type == DataType.Double
        ? OrtValue.CreateTensorValueFromMemory(data, shape)
        : OrtValue.CreateTensorValueFromMemory(data.Select(d => (float)d).ToArray(), shape);

    private static double[] Read(OrtValue value) =>
        value.GetTensorTypeAndShape().ElementDataType == TensorElementType.Double
            ? value.GetTensorDataAsSpan<double>().ToArray()
            : value.GetTensorDataAsSpan<float>().ToArray().Select(f => (double)f).ToArray();

    private InMemoryTensor MakeTensor(string name, long[] dims, double lo, double hi)
    {
        long n = dims.Aggregate(1L, (a, d) => a * d);
        double[] data = Enumerable.Range(0, (int)n).Select(_ => lo + ((hi - lo) * _rng.NextDouble())).ToArray();
        return MakeTensorFrom(name, dims, data);
    }

    private InMemoryTensor MakeTensorFrom(string name, long[] dims, double[] data) => Type == DataType.Double
        ? InMemoryTensor.From(name, DataType.Double, dims, data.AsSpan())
        : InMemoryTensor.FromFloats(name, dims, data.Select(d => (float)d).ToArray());

    private static double[] ToDoubles(Tensor t) => t.DataType == DataType.Double
        ? t.ToArray<double>()
        : t.ToArray<float>().Select(f => (double)f).ToArray();
}
