using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Bench;

/// <summary>Prints a model's structure, one line per input, initializer and node (for studying exporters' graphs).</summary>
internal static class ModelDump
{
    public static int Run(string path)
    {
        using Model m = OnnxReader.Load(path);
        foreach (var kv in m.OpsetImports)
        {
            Console.WriteLine($"opset '{kv.Key}' = {kv.Value}");
        }

        foreach (Value v in m.Graph.Inputs)
        {
            Console.WriteLine($"input {v.Name} {v.ElementType} {v.Shape}");
        }

        foreach (Value v in m.Graph.Outputs)
        {
            Console.WriteLine($"output {v.Name} {v.ElementType} {v.Shape}");
        }

        foreach (Value v in m.Graph.Initializers.Values)
        {
            Console.WriteLine($"init {v.Initializer}");
        }

        foreach (Node n in m.Graph.Nodes)
        {
            string inputs = string.Join(", ", n.Inputs.Select(i => i?.Name));
            string outputs = string.Join(", ", n.Outputs.Select(o => o.Name));
            string attrs = string.Join(" ", n.Attributes.Values.Select(a => $"{a.Name}={a}"));
            Console.WriteLine($"{n.Name} {n.Domain}:{n.OpType} ({inputs}) -> ({outputs}) {attrs}");
        }

        return 0;
    }
}
