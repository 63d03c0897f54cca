using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>Small helpers shared by the builders (node names in torch.onnx's "/scope/Op" style).</summary>
internal static class BuilderHelpers
{
    // Per builder: how many nodes took each "{scope}/{op}" name, so repeats are numbered _1, _2 as torch.onnx does.
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<GraphBuilder, Dictionary<string, int>> s_nameCounts = [];

    /// <summary>Adds a node named <c>{scope}/{op}</c>, <c>{scope}/{op}_1</c>, ... (torch.onnx's numbering) with one output.</summary>
    public static Value Node(this GraphBuilder b, string scope, string op, Value?[] inputs, Attr[]? attributes = null, string domain = "") =>
        b.Op(op, inputs, attributes, domain, name: b.TorchName($"{scope}/{op}"));

    /// <summary>The next torch-style name for <paramref name="baseName"/>: itself first, then <c>_1</c>, <c>_2</c>, ...</summary>
    public static string TorchName(this GraphBuilder b, string baseName)
    {
        Dictionary<string, int> counts = s_nameCounts.GetOrCreateValue(b);
        int n = counts.GetValueOrDefault(baseName);
        counts[baseName] = n + 1;
        return n == 0 ? baseName : $"{baseName}_{n}";
    }

    /// <summary>A float32 initializer from a weight source.</summary>
    public static Value Weight(this GraphBuilder b, IWeightSource source, string initializerName, WeightRequest request) =>
        b.Initializer(new InMemoryTensor(initializerName, DataType.Float, request.Dims, source.GetFloat32(request)));

    /// <summary>A float32 initializer from a weight source converted to <paramref name="type"/> (float or float16).</summary>
    public static Value Weight(this GraphBuilder b, IWeightSource source, string initializerName, WeightRequest request, DataType type)
    {
        ReadOnlyMemory<byte> bytes = source.GetFloat32(request);
        if (type == DataType.Float)
        {
            return b.Initializer(new InMemoryTensor(initializerName, DataType.Float, request.Dims, bytes));
        }

        byte[] converted = TensorConvert.FromFloat32(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.Span), type);
        return b.Initializer(new InMemoryTensor(initializerName, type, request.Dims, converted));
    }

    /// <summary>A float32 weight read as floats.</summary>
    public static float[] Floats(this IWeightSource source, WeightRequest request) =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(source.GetFloat32(request).Span).ToArray();

    /// <summary>LayerNormalization (opset 17) over the last axis with weight and bias initializers.</summary>
    public static Value LayerNorm(this GraphBuilder b, IWeightSource source, string scope, Value x, string key, int hidden, float epsilon)
    {
        Value gamma = b.Weight(source, $"{key}.weight", new($"{key}.weight", WeightRole.NormScale, [hidden]));
        Value beta = b.Weight(source, $"{key}.bias", new($"{key}.bias", WeightRole.Bias, [hidden]));
        return b.Op("LayerNormalization", [x, gamma, beta], [Attr.Int("axis", -1), Attr.Float("epsilon", epsilon)], name: $"{scope}/LayerNormalization");
    }

    /// <summary>
    /// Exact (erf) GELU: the standard Gelu op from opset 20, else decomposed as torch exports it before opset 20:
    /// x · 0.5 · (1 + erf(x / √2)).
    /// </summary>
    public static Value Gelu(this GraphBuilder b, string scope, Value x, Func<string, float, Value> constant)
    {
        if (b.Model.DefaultOpset >= 20)
        {
            return b.Node(scope, "Gelu", [x], [Attr.String("approximate", "none")]);
        }

        Value scaled = b.Node(scope, "Div", [x, constant("const_sqrt2", MathF.Sqrt(2f))]);
        Value erf = b.Node(scope, "Erf", [scaled]);
        Value onePlus = b.Node(scope, "Add", [erf, constant("const_1.0", 1f)]);
        Value times = b.Node(scope, "Mul", [x, onePlus]);
        return b.Node(scope, "Mul", [times, constant("const_0.5", 0.5f)]);
    }

    /// <summary>Rotary cos/sin tables [positions, width]; RotateHalf repeats the half-width table twice.</summary>
    public static (float[] Cos, float[] Sin, int Width) RotaryTables(int positions, int headDim, float theta, bool duplicate)
    {
        int half = headDim / 2;
        int width = duplicate ? headDim : half;
        var cos = new float[positions * width];
        var sin = new float[positions * width];
        for (int p = 0; p < positions; p++)
        {
            for (int i = 0; i < half; i++)
            {
                // Same float arithmetic as llama2.c's run.c, so converted checkpoints match it closely.
                float freq = 1.0f / MathF.Pow(theta, 2 * i / (float)headDim);
                float angle = p * freq;
                cos[(p * width) + i] = MathF.Cos(angle);
                sin[(p * width) + i] = MathF.Sin(angle);
                if (duplicate)
                {
                    cos[(p * width) + half + i] = MathF.Cos(angle);
                    sin[(p * width) + half + i] = MathF.Sin(angle);
                }
            }
        }

        return (cos, sin, width);
    }

    /// <summary>Transposes a row-major [rows, cols] matrix.</summary>
    public static float[] Transpose(ReadOnlySpan<float> source, int rows, int cols)
    {
        var result = new float[source.Length];
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++)
            {
                result[(c * rows) + r] = source[(r * cols) + c];
            }
        }

        return result;
    }
}
