using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Onnx.Lora.Tests.Support;

/// <summary>Runs a model file in ONNX Runtime (CPU) with deterministic inputs and returns every output as float32.</summary>
internal static class OrtRunner
{
    /// <summary>Symbolic dims are bound to these sizes when the test does not say otherwise.</summary>
    public static readonly IReadOnlyDictionary<string, long> DefaultDims = new Dictionary<string, long>
    {
        ["batch_size"] = 1,
        ["batch"] = 1,
        ["sequence_length"] = 5,
        ["seq"] = 5,
        ["total_sequence_length"] = 5,
        ["past_sequence_length"] = 0,
    };

    public static Dictionary<string, float[]> Run(string modelPath, int seed = 20261125, Func<string, long>? dimFor = null, RunOptions? runOptions = null)
    {
        using InferenceSession session = Open(modelPath);
        var inputs = MakeInputs(session, seed, dimFor);
        try
        {
            using var results = runOptions is null ? session.Run(inputs.Values.ToList()) : session.Run(inputs.Values.ToList(), session.OutputNames, runOptions);
            return results.ToDictionary(r => r.Name, ToFloats);
        }
        finally
        {
            foreach (var input in inputs.Values)
            {
                (input.Value as IDisposable)?.Dispose();
            }
        }
    }

    /// <summary>Runs a model with the generated inputs plus <paramref name="extra"/> float32 feeds (e.g. adapter slots).</summary>
    public static Dictionary<string, float[]> RunWithFeeds(string modelPath, IReadOnlyDictionary<string, (float[] Data, int[] Dims)> extra, int seed = 20261125)
    {
        using InferenceSession session = Open(modelPath);
        var inputs = MakeInputs(session, seed, null).Where(kv => !extra.ContainsKey(kv.Key)).Select(kv => kv.Value).ToList();
        inputs.AddRange(extra.Select(kv => NamedOnnxValue.CreateFromTensor(kv.Key, new DenseTensor<float>(kv.Value.Data, kv.Value.Dims))));
        using var results = session.Run(inputs);
        return results.ToDictionary(r => r.Name, ToFloats);
    }

    // Unoptimized and single-threaded: the reference run must not depend on ORT's fusions or thread count.
    private static InferenceSession Open(string modelPath)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL, IntraOpNumThreads = 1 };
        return new InferenceSession(modelPath, options);
    }

    public static Dictionary<string, NamedOnnxValue> MakeInputs(InferenceSession session, int seed, Func<string, long>? dimFor)
    {
        var rng = new Random(seed);
        var result = new Dictionary<string, NamedOnnxValue>();
        foreach ((string name, NodeMetadata meta) in session.InputMetadata)
        {
            int[] dims = meta.Dimensions.Select((d, i) => d >= 0 ? d : (int)Bind(meta.SymbolicDimensions[i], name, dimFor)).ToArray();
            int count = dims.Aggregate(1, (a, b) => a * b);
            Type t = meta.ElementType;
            bool isIds = name.Contains("ids", StringComparison.Ordinal);
            bool isMask = name.Contains("mask", StringComparison.Ordinal);
            NamedOnnxValue v;
            if (t == typeof(long))
            {
                long[] data = Enumerable.Range(0, count).Select(i => isMask ? 1L : isIds ? rng.Next(0, 200) : (long)rng.Next(0, 4)).ToArray();
                if (name.Contains("position", StringComparison.Ordinal))
                {
                    data = Enumerable.Range(0, count).Select(i => (long)(i % Math.Max(1, dims[^1]))).ToArray();
                }

                v = NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(data, dims));
            }
            else if (t == typeof(int))
            {
                int[] data = Enumerable.Range(0, count).Select(i => isMask ? 1 : isIds ? rng.Next(0, 200) : rng.Next(0, 4)).ToArray();
                if (name.Contains("seqlens", StringComparison.Ordinal) || name.Contains("total_seq", StringComparison.Ordinal))
                {
                    data = Enumerable.Repeat((int)Bind("total_sequence_length", name, dimFor) - (name.Contains("seqlens", StringComparison.Ordinal) ? 1 : 0), count).ToArray();
                }

                v = NamedOnnxValue.CreateFromTensor(name, new DenseTensor<int>(data, dims));
            }
            else if (t == typeof(float))
            {
                float[] data = Enumerable.Range(0, count).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                v = NamedOnnxValue.CreateFromTensor(name, new DenseTensor<float>(data, dims));
            }
            else if (t == typeof(Float16))
            {
                Float16[] data = Enumerable.Range(0, count).Select(_ => (Float16)(float)(rng.NextDouble() * 2 - 1)).ToArray();
                v = NamedOnnxValue.CreateFromTensor(name, new DenseTensor<Float16>(data, dims));
            }
            else if (t == typeof(bool))
            {
                v = NamedOnnxValue.CreateFromTensor(name, new DenseTensor<bool>(Enumerable.Repeat(true, count).ToArray(), dims));
            }
            else
            {
                throw new NotSupportedException($"Input '{name}' of {t.Name} is not supported by the test runner.");
            }

            result[name] = v;
        }

        return result;
    }

    private static long Bind(string symbol, string input, Func<string, long>? dimFor)
    {
        if (dimFor is not null)
        {
            long d = dimFor(symbol);
            if (d >= 0)
            {
                return d;
            }
        }

        if (DefaultDims.TryGetValue(symbol, out long v))
        {
            return v;
        }

        if (symbol.Contains("past", StringComparison.OrdinalIgnoreCase))
        {
            return 0;
        }

        return input.Contains("past", StringComparison.Ordinal) ? 0 : 5;
    }

    public static float[] ToFloats(DisposableNamedOnnxValue value) => value.Value switch
    {
        DenseTensor<float> f => f.Buffer.ToArray(),
        DenseTensor<Float16> h => h.Buffer.ToArray().Select(x => (float)x).ToArray(),
        DenseTensor<long> l => l.Buffer.ToArray().Select(x => (float)x).ToArray(),
        DenseTensor<int> i => i.Buffer.ToArray().Select(x => (float)x).ToArray(),
        DenseTensor<bool> b => b.Buffer.ToArray().Select(x => x ? 1f : 0f).ToArray(),
        _ => throw new NotSupportedException($"Output '{value.Name}' of {value.Value?.GetType().Name} is not supported by the test runner."),
    };

    /// <summary>
    /// Runs <paramref name="session"/> with the int64 batch tensors of <paramref name="feeds"/> that it takes (each of
    /// <paramref name="shape"/>; inputs it does not name keep their initializer defaults) and returns the float32
    /// <paramref name="outputs"/> in order.
    /// </summary>
    public static float[][] RunBatch(InferenceSession session, IReadOnlyDictionary<string, long[]> feeds, long[] shape, IReadOnlyCollection<string> outputs)
    {
        string[] names = [.. session.InputMetadata.Keys.Where(feeds.ContainsKey)];
        OrtValue[] values = [.. names.Select(n => OrtValue.CreateTensorValueFromMemory(feeds[n], shape))];
        try
        {
            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, names, values, outputs);
            return [.. results.Select(r => r.GetTensorDataAsSpan<float>().ToArray())];
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }
    }
}
