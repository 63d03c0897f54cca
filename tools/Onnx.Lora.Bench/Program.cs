using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;

if (args.Length >= 2 && args[0] == "dump")
{
    using Model m = OnnxReader.Load(args[1]);
    foreach (var kv in m.OpsetImports) Console.WriteLine($"opset {kv.Key}={kv.Value}");
    foreach (var v in m.Graph.Inputs) Console.WriteLine($"input {v.Name} {v.ElementType} {v.Shape}");
    foreach (var v in m.Graph.Outputs) Console.WriteLine($"output {v.Name} {v.ElementType} {v.Shape}");
    foreach (var v in m.Graph.Initializers.Values) Console.WriteLine($"init {v.Initializer}");
    foreach (var n in m.Graph.Nodes) Console.WriteLine($"{n.Name} {n.Domain}:{n.OpType} ({string.Join(", ", n.Inputs.Select(i => i?.Name))}) -> ({string.Join(", ", n.Outputs.Select(o => o.Name))}) {string.Join(" ", n.Attributes.Values.Select(a => a.Name + "=" + a))}");
}
