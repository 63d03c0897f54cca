using System.Globalization;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>Sizes of the paddle2onnx-style model <see cref="PaddleStyleBuilder"/> builds.</summary>
public sealed record PaddleStyleConfig
{
    /// <summary>Image channels of the input.</summary>
    public int Channels { get; init; } = 3;

    /// <summary>Image height and width of the input.</summary>
    public int ImageSize { get; init; } = 8;

    /// <summary>Token width after the convolution stem (channels of its last Conv).</summary>
    public int Hidden { get; init; } = 16;

    /// <summary>Hidden width of each block's MLP.</summary>
    public int Intermediate { get; init; } = 32;

    /// <summary>Attention + MLP blocks (6 weight MatMuls each).</summary>
    public int Blocks { get; init; } = 3;

    /// <summary>Classes of the Gemm head.</summary>
    public int Classes { get; init; } = 5;

    /// <summary>Opset (paddle2onnx's default for old exports is 9).</summary>
    public long Opset { get; init; } = 9;

    /// <summary>Seed of the random weights.</summary>
    public int Seed { get; init; } = 20261203;

    /// <summary>Checks the sizes.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive, or the image is not a multiple of 2.</exception>
    public void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Channels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Hidden);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Intermediate);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Blocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(Classes);
        ArgumentOutOfRangeException.ThrowIfLessThan(ImageSize, 2);
        if (ImageSize % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(ImageSize), ImageSize, "The stride-2 Conv needs an even image size.");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(Opset, 9);
    }
}

/// <summary>
/// Builds a small vision transformer the way paddle2onnx (and older tf2onnx) export: opset 9, NO initializers, every
/// weight a <c>Constant</c> node named as Paddle names parameters (<c>linear_3.w_0</c>, <c>conv2d_1.w_0</c>), nodes named
/// <c>p2o.MatMul.N</c>. A convolution stem (3×3, 3×3 stride 2, 1×1) turns the image <c>x</c> [batch, C, S, S] into
/// (S/2)² tokens; each block is single-head attention (q, k, v, o) and an MLP (two MatMuls) with residuals; a mean
/// over tokens feeds a Gemm head (transB = 1) giving <c>logits</c> [batch, classes].
/// </summary>
/// <remarks>
/// The weights reach their MatMul in every form such exporters use: directly, through Transpose (stored [out, in]),
/// Cast (stored float64), Reshape (stored flat) and Identity.
/// </remarks>
public static class PaddleStyleBuilder
{
    /// <summary>Builds the model with seeded random weights.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public static Model Build(PaddleStyleConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        return new Writer(config).Build();
    }

    private sealed class Writer(PaddleStyleConfig c)
    {
        private readonly GraphBuilder _b = new("paddle_main", c.Opset);
        private readonly RandomWeightSource _random = new(c.Seed);
        private readonly Dictionary<string, int> _counters = new(StringComparer.Ordinal);
        private int _linear;

        public Model Build()
        {
            Value x = _b.Input("x", DataType.Float, "batch", c.Channels, c.ImageSize, c.ImageSize);
            Value h = Op("Relu", Conv(x, 0, c.Channels, c.Hidden / 2, kernel: 3, stride: 1, pad: 1, biasInNode: true));
            h = Op("Relu", Conv(h, 1, c.Hidden / 2, c.Hidden, kernel: 3, stride: 2, pad: 1, biasInNode: false));
            h = Conv(h, 2, c.Hidden, c.Hidden, kernel: 1, stride: 1, pad: 0, biasInNode: true);
            Value seq = Op("Reshape", h, Constant("p2o.shape", InMemoryTensor.Int64Vector("shape", 0, c.Hidden, -1)));
            Value t = Op("Transpose", [seq], [Attr.Ints("perm", 0, 2, 1)]);
            for (int block = 0; block < c.Blocks; block++)
            {
                t = Block(t);
            }

            Value pooled = Op("ReduceMean", [t], [Attr.Ints("axes", 1), Attr.Int("keepdims", 0)]);
            float[] head = _random.Floats(new WeightRequest("head", WeightRole.Linear, [c.Hidden, c.Classes]));
            Value w = Constant("linear_head.w_0", InMemoryTensor.FromFloats("w", [c.Classes, c.Hidden], BuilderHelpers.Transpose(head, c.Hidden, c.Classes)));
            Value b = Constant("linear_head.b_0", InMemoryTensor.FromFloats("b", [c.Classes], Bias("linear_head", c.Classes)));
            Value logits = Op("Gemm", [pooled, w, b], [Attr.Int("transB", 1)]);
            _b.Output(logits, "logits", DataType.Float, "batch", c.Classes);
            return _b.Model;
        }

        private Value Block(Value x)
        {
            int d = c.Hidden;
            Value q = Linear(x, d, d, WeightForm.Plain);
            Value k = Linear(x, d, d, WeightForm.TransposedOutIn);
            Value v = Linear(x, d, d, WeightForm.Float64Cast);
            Value scores = Op("MatMul", q, Op("Transpose", [k], [Attr.Ints("perm", 0, 2, 1)]));
            scores = Op("Mul", scores, Constant(Fresh("p2o.scale"), InMemoryTensor.Scalar("s", 1f / MathF.Sqrt(d))));
            Value probs = Op("Softmax", [scores], [Attr.Int("axis", 2)]);
            Value o = Linear(Op("MatMul", probs, v), d, d, WeightForm.ReshapedFlat);
            x = Op("Add", x, o);
            Value up = Op("Relu", Linear(x, d, c.Intermediate, WeightForm.Identity));
            return Op("Add", x, Linear(up, c.Intermediate, d, WeightForm.Plain));
        }

        private Value Linear(Value x, int inFeatures, int outFeatures, WeightForm form)
        {
            string key = "linear_" + (_linear++).ToString(CultureInfo.InvariantCulture);
            float[] w = _random.Floats(new WeightRequest(key, WeightRole.Linear, [inFeatures, outFeatures]));
            string name = key + ".w_0";
            Value weight = form switch
            {
                WeightForm.TransposedOutIn => Op("Transpose", [Constant(name, InMemoryTensor.FromFloats("w", [outFeatures, inFeatures], BuilderHelpers.Transpose(w, inFeatures, outFeatures)))], [Attr.Ints("perm", 1, 0)]),
                WeightForm.Float64Cast => Op("Cast", [Constant(name, InMemoryTensor.From<double>("w", DataType.Double, [inFeatures, outFeatures], w.Select(f => (double)f).ToArray()))], [Attr.Int("to", (long)DataType.Float)]),
                WeightForm.ReshapedFlat => Op("Reshape", Constant(name, InMemoryTensor.FromFloats("w", [inFeatures * outFeatures], w)), Constant(Fresh("p2o.shape"), InMemoryTensor.Int64Vector("shape", inFeatures, outFeatures))),
                WeightForm.Identity => Op("Identity", Constant(name, InMemoryTensor.FromFloats("w", [inFeatures, outFeatures], w))),
                _ => Constant(name, InMemoryTensor.FromFloats("w", [inFeatures, outFeatures], w)),
            };
            Value bias = Constant(key + ".b_0", InMemoryTensor.FromFloats("b", [outFeatures], Bias(key, outFeatures)));
            return Op("Add", Op("MatMul", x, weight), bias);
        }

        private Value Conv(Value x, int index, int inChannels, int outChannels, int kernel, int stride, int pad, bool biasInNode)
        {
            string key = "conv2d_" + index.ToString(CultureInfo.InvariantCulture);
            float[] w = _random.Floats(new WeightRequest(key, WeightRole.Linear, [inChannels * kernel * kernel, outChannels]));
            Value weight = Constant(key + ".w_0", InMemoryTensor.FromFloats("w", [outChannels, inChannels, kernel, kernel], w));
            Attr[] attributes = [Attr.Ints("kernel_shape", kernel, kernel), Attr.Ints("strides", stride, stride), Attr.Ints("pads", pad, pad, pad, pad), Attr.Ints("dilations", 1, 1), Attr.Int("group", 1)];
            if (biasInNode)
            {
                Value b = Constant(key + ".b_0", InMemoryTensor.FromFloats("b", [outChannels], Bias(key, outChannels)));
                return Op("Conv", [x, weight, b], attributes);
            }

            // Paddle's conv2d has no bias: an elementwise_add of a [1, C, 1, 1] constant follows it.
            Value added = Constant(key + ".b_0", InMemoryTensor.FromFloats("b", [1, outChannels, 1, 1], Bias(key, outChannels)));
            return Op("Add", Op("Conv", [x, weight], attributes), added);
        }

        private float[] Bias(string key, int count) => _random.Floats(new WeightRequest(key + ".b", WeightRole.Bias, [count]));

        private Value Constant(string outputName, Tensor tensor)
        {
            Value v = Op("Constant", [], [Attr.Tensor("value", tensor)]);
            v.Name = outputName;
            return v;
        }

        private Value Op(string op, params Value[] inputs) => Op(op, inputs, null);

        private Value Op(string op, Value[] inputs, Attr[]? attributes)
        {
            int n = _counters.GetValueOrDefault(op);
            _counters[op] = n + 1;
            return _b.Op(op, inputs, attributes, name: $"p2o.{op}.{n.ToString(CultureInfo.InvariantCulture)}");
        }

        private string Fresh(string hint)
        {
            int n = _counters.GetValueOrDefault(hint);
            _counters[hint] = n + 1;
            return $"{hint}.{n.ToString(CultureInfo.InvariantCulture)}";
        }
    }

    private enum WeightForm
    {
        Plain,
        TransposedOutIn,
        Float64Cast,
        ReshapedFlat,
        Identity,
    }
}
