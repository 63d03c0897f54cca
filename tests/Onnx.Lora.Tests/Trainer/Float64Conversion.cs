using Onnx.Lora.Ir;
using ValueType = Onnx.Lora.Ir.ValueType;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Test helper: turns a float32 model into the same model in float64 (initializers, Constant / ConstantOfShape values,
/// Cast targets, declared types), so finite differences can be taken in double precision.
/// </summary>
internal static class Float64Conversion
{
    public static void Apply(Model model)
    {
        Onnx.Lora.Ir.Graph graph = model.Graph;
        foreach (Value init in graph.Initializers.Values.ToArray())
        {
            if (init.Initializer!.DataType == DataType.Float)
            {
                graph.Initializers.SetData(init.Name, ToDouble(init.Initializer));
                init.Type = ValueType.Tensor(DataType.Double, init.Shape);
            }
        }

        foreach (Node node in graph.Nodes)
        {
            if (node.Is("Cast") && node.GetInt("to", 0) == (long)DataType.Float)
            {
                node.SetAttribute(Attr.Int("to", (long)DataType.Double));
            }

            if ((node.Is("Constant") || node.Is("ConstantOfShape")) && node.GetAttribute("value") is { } v && v.AsTensor().DataType == DataType.Float)
            {
                node.SetAttribute(Attr.Tensor("value", ToDouble(v.AsTensor())));
            }

            foreach (Value output in node.Outputs)
            {
                Retype(output);
            }
        }

        foreach (Value v in graph.Inputs.Concat(graph.Outputs))
        {
            Retype(v);
        }
    }

    private static void Retype(Value v)
    {
        if (v.ElementType == DataType.Float)
        {
            v.Type = ValueType.Tensor(DataType.Double, v.Shape);
        }
    }

    private static InMemoryTensor ToDouble(Tensor t) =>
        InMemoryTensor.From(t.Name, DataType.Double, t.Dims, t.ToArray<float>().Select(f => (double)f).ToArray().AsSpan());
}
