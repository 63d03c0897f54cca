using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>One initializer per distinct constant name, as torch exports share constants.</summary>
internal sealed class ConstantCache(GraphBuilder b)
{
    private readonly Dictionary<string, Value> _values = new(StringComparer.Ordinal);

    public Value Int64s(string name, params long[] values) => Get(name, () => b.Int64s(name, values));

    public Value Int64Scalar(string name, long value) => Get(name, () => b.Initializer(InMemoryTensor.FromInt64s(name, [], [value])));

    public Value Float(string name, float value) => Get(name, () => b.Scalar(name, value));

    private Value Get(string name, Func<Value> create)
    {
        if (!_values.TryGetValue(name, out Value? value))
        {
            value = create();
            _values[name] = value;
        }

        return value;
    }
}
