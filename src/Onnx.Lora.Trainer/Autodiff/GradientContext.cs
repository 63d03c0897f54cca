using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// What gradient rules build with: a <see cref="GraphBuilder"/> on the graph being differentiated, typed constants,
/// shape helpers and the broadcast-undoing reduction. Emitted ops follow the model's default opset (13 or newer:
/// ReduceSum/Squeeze/Unsqueeze/Split take their axes as inputs).
/// </summary>
public sealed class GradientContext
{
    private readonly Dictionary<Value, Value> _shapes = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<(DataType, double), Value> _scalars = [];
    private readonly Dictionary<string, Value> _int64Constants = new(StringComparer.Ordinal);

    internal GradientContext(GraphBuilder builder, ValueFacts facts)
    {
        Builder = builder;
        Facts = facts;
        Opset = builder.Model.DefaultOpset;
    }

    /// <summary>Builder that appends backward nodes to the graph.</summary>
    public GraphBuilder Builder { get; }

    /// <summary>Default-domain opset of the model.</summary>
    public long Opset { get; }

    internal ValueFacts Facts { get; }

    /// <summary>Element type of a value (Undefined when unknown).</summary>
    public DataType TypeOf(Value value) => Facts.TypeOf(value);

    /// <summary>Rank of a value, null when unknown.</summary>
    public int? RankOf(Value value) => Facts.RankOf(value);

    /// <summary>Dims of a value, null when the rank is unknown.</summary>
    public Dim[]? ShapeOf(Value value) => Facts.ShapeOf(value);

    /// <summary>Adds a default-domain node with one output.</summary>
    public Value Op(string opType, Value?[] inputs, params Attr[] attributes) => Builder.Op(opType, inputs, attributes);

    /// <summary>Adds a com.microsoft node with one output.</summary>
    public Value MsOp(string opType, Value?[] inputs, params Attr[] attributes)
    {
        Builder.Model.RequireOpset("com.microsoft", 1);
        return Builder.Op(opType, inputs, attributes, "com.microsoft");
    }

    /// <summary>a + b.</summary>
    public Value Add(Value a, Value b) => Op("Add", [a, b]);

    /// <summary>a - b.</summary>
    public Value Sub(Value a, Value b) => Op("Sub", [a, b]);

    /// <summary>a * b.</summary>
    public Value Mul(Value a, Value b) => Op("Mul", [a, b]);

    /// <summary>a / b.</summary>
    public Value Div(Value a, Value b) => Op("Div", [a, b]);

    /// <summary>-a.</summary>
    public Value Neg(Value a) => Op("Neg", [a]);

    /// <summary>A scalar constant of the element type of <paramref name="like"/> (float when unknown).</summary>
    public Value Scalar(double value, Value like) => Scalar(value, ElementTypeOrFloat(like));

    /// <summary>A scalar constant of element type <paramref name="type"/>.</summary>
    public Value Scalar(double value, DataType type)
    {
        if (_scalars.TryGetValue((type, value), out Value? cached))
        {
            return cached;
        }

        string name = Builder.FreshName("grad_const");
        Tensor tensor = type switch
        {
            DataType.Double => InMemoryTensor.From(name, type, [], [value]),
            DataType.Float16 => InMemoryTensor.From(name, type, [], [(Half)value]),
            DataType.BFloat16 => InMemoryTensor.From(name, type, [], [TensorConvert.ToBFloat16Bits((float)value)]),
            DataType.Int64 => InMemoryTensor.From(name, type, [], [(long)value]),
            DataType.Int32 => InMemoryTensor.From(name, type, [], [(int)value]),
            _ => InMemoryTensor.Scalar(name, (float)value),
        };
        Value v = Builder.Initializer(tensor);
        _scalars[(type, value)] = v;
        return v;
    }

    /// <summary>A 1-D int64 constant (cached).</summary>
    public Value Ints(params long[] values)
    {
        string key = string.Join(",", values);
        if (!_int64Constants.TryGetValue(key, out Value? v))
        {
            v = Builder.Int64s(Builder.FreshName("grad_ints"), values);
            _int64Constants[key] = v;
        }

        return v;
    }

    /// <summary>Shape of a value computed at run time (one Shape node per value).</summary>
    public Value ShapeOfValue(Value value)
    {
        if (!_shapes.TryGetValue(value, out Value? s))
        {
            s = Op("Shape", [value]);
            _shapes[value] = s;
        }

        return s;
    }

    /// <summary>ReduceSum over constant axes.</summary>
    public Value ReduceSum(Value x, long[] axes, bool keepDims) =>
        Opset >= 13
            ? Op("ReduceSum", [x, Ints(axes)], Attr.Int("keepdims", keepDims ? 1 : 0))
            : Op("ReduceSum", [x], Attr.Ints("axes", axes), Attr.Int("keepdims", keepDims ? 1 : 0));

    /// <summary>ReduceMean over constant axes.</summary>
    public Value ReduceMean(Value x, long[] axes, bool keepDims = true) =>
        Opset >= 18
            ? Op("ReduceMean", [x, Ints(axes)], Attr.Int("keepdims", keepDims ? 1 : 0))
            : Op("ReduceMean", [x], Attr.Ints("axes", axes), Attr.Int("keepdims", keepDims ? 1 : 0));

    /// <summary>Unsqueeze at constant axes.</summary>
    public Value Unsqueeze(Value x, long[] axes) =>
        Opset >= 13 ? Op("Unsqueeze", [x, Ints(axes)]) : Op("Unsqueeze", [x], Attr.Ints("axes", axes));

    /// <summary>Reshapes <paramref name="x"/> to the run-time shape of <paramref name="like"/>.</summary>
    public Value ReshapeLike(Value x, Value like) => Op("Reshape", [x, ShapeOfValue(like)]);

    /// <summary>Zeros with the shape and element type of <paramref name="like"/>.</summary>
    public Value ZerosLike(Value like)
    {
        DataType type = ElementTypeOrFloat(like);
        Tensor zero = type switch
        {
            DataType.Double => InMemoryTensor.From("value", type, [1], [0.0]),
            DataType.Float16 => InMemoryTensor.From("value", type, [1], [(Half)0]),
            _ => InMemoryTensor.FromFloats("value", [1], [0f]),
        };
        return Op("ConstantOfShape", [ShapeOfValue(like)], Attr.Tensor("value", zero));
    }

    /// <summary>Sums gradient contributions (one Sum node when there are several).</summary>
    public Value Sum(IReadOnlyList<Value> terms)
    {
        ArgumentNullException.ThrowIfNull(terms);
        return terms.Count == 1 ? terms[0] : Op("Sum", [.. terms]);
    }

    /// <summary>
    /// Undoes broadcasting: sums <paramref name="gradient"/> (shaped like the broadcast result) down to the shape of
    /// <paramref name="input"/>. Skipped when the shapes are provably equal; static axes when they are known; else
    /// the axes come from Shape ops at run time, so symbolic batch and sequence dims work.
    /// </summary>
    public Value Unbroadcast(Value gradient, Value input, Value? broadcastResult = null)
    {
        ArgumentNullException.ThrowIfNull(gradient);
        ArgumentNullException.ThrowIfNull(input);
        Dim[]? xs = ShapeOf(input);
        Dim[]? gs = ShapeOf(broadcastResult ?? gradient);
        if (xs is not null && gs is not null && xs.Length == gs.Length && xs.Zip(gs).All(p => ValueFacts.SameDim(p.First, p.Second)))
        {
            return gradient;
        }

        if (StaticBroadcastAxes(xs, gs) is { } axes)
        {
            if (axes.Count == 0)
            {
                return gradient;
            }

            Value reduced = ReduceSum(gradient, [.. axes], keepDims: true);
            int lead = gs!.Length - xs!.Length;
            if (lead == 0)
            {
                return reduced;
            }

            // Leading axes the input did not have are size 1 now: a constant Reshape when the input's shape is fixed,
            // else a Squeeze, which keeps symbolic dims without asking for shapes at run time.
            return xs.All(d => d.IsFixed)
                ? Op("Reshape", [reduced, Ints(xs.Select(d => d.Value!.Value).ToArray())])
                : Opset >= 13 ? Op("Squeeze", [reduced, Ints(Enumerable.Range(0, lead).Select(i => (long)i).ToArray())])
                : Op("Squeeze", [reduced], Attr.Ints("axes", Enumerable.Range(0, lead).Select(i => (long)i).ToArray()));
        }

        if (Opset < 13)
        {
            throw new LoraException($"Undoing the broadcast of '{input.Name}' needs run-time axes, which need opset 13 or newer (model has {Opset}).");
        }

        // Run time: pad Shape(x) with leading ones to the gradient's rank, reduce every axis where it is 1.
        Value gShape = ShapeOfValue(gradient);
        Value xShape = ShapeOfValue(input);
        Value rankDiff = Op("Sub", [Op("Shape", [gShape]), Op("Shape", [xShape])]);
        Value ones = Op("ConstantOfShape", [rankDiff], Attr.Tensor("value", InMemoryTensor.FromInt64s("value", [1], [1L])));
        Value padded = Op("Concat", [ones, xShape], Attr.Int("axis", 0));
        Value isOne = Op("Equal", [padded, Ints(1)]);
        Value axesValue = Op("Reshape", [Op("NonZero", [isOne]), Ints(-1)]);
        Value sum = Op("ReduceSum", [gradient, axesValue], Attr.Int("keepdims", 1), Attr.Int("noop_with_empty_axes", 1));
        return Op("Reshape", [sum, xShape]);
    }

    /// <summary>
    /// The axes of a gradient shaped <paramref name="gs"/> to sum so that it gets the shape <paramref name="xs"/> of the
    /// broadcast input, when the shapes decide it: leading axes the input lacks, and axes where the input has a fixed 1
    /// (summing an axis that turns out to be 1 at run time is harmless). An axis where the input's size is fixed and
    /// above 1, or the same symbol as the gradient's, is kept. Null when some axis cannot be told (unknown dims, or two
    /// different symbols where either could be 1).
    /// </summary>
    private static List<long>? StaticBroadcastAxes(Dim[]? xs, Dim[]? gs)
    {
        if (xs is null || gs is null || gs.Length < xs.Length)
        {
            return null;
        }

        int lead = gs.Length - xs.Length;
        var axes = new List<long>();
        for (int i = 0; i < gs.Length; i++)
        {
            if (i < lead)
            {
                axes.Add(i);
                continue;
            }

            Dim x = xs[i - lead];
            Dim g = gs[i];
            if (x.Value == 1)
            {
                if (g.Value != 1)
                {
                    axes.Add(i);
                }
            }
            else if (!(x.Value > 1 || ValueFacts.SameDim(x, g)))
            {
                return null;
            }
        }

        return axes;
    }

    /// <summary>Casts <paramref name="gradient"/> to the element type of <paramref name="like"/> when they differ.</summary>
    public Value CastLike(Value gradient, Value like)
    {
        DataType from = TypeOf(gradient);
        DataType to = TypeOf(like);
        if (from == to || to == DataType.Undefined)
        {
            return gradient;
        }

        return Op("Cast", [gradient], Attr.Int("to", (long)to));
    }

    private DataType ElementTypeOrFloat(Value v)
    {
        DataType t = TypeOf(v);
        return t == DataType.Undefined ? DataType.Float : t;
    }
}
