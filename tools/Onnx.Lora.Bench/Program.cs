using Onnx.Lora.Bench;

// Benchmarks of Onnx.Lora that are not timed tests. Verbs:
//   graph-io [--dir out/bench] [--runs 5] [--random]   open + save a 1B-shaped torch-style Llama with external data
//   inject [--dir out/bench] [--runs 5]                 load + inject all-linear r=16 + save that 1B-shaped model
//   adamw [steps]                                       AdamW update: vectorized C# vs ONNX model, ratio
//   dump MODEL                                          print a model's inputs, initializers and nodes
return args.FirstOrDefault() switch
{
    "graph-io" => GraphIoBenchmark.Run(args[1..]),
    GraphIoBenchmark.ChildVerb => GraphIoBenchmark.RunChild(args[1..]),
    "inject" => InjectBenchmark.Run(args[1..]),
    InjectBenchmark.ChildVerb => InjectBenchmark.RunChild(args[1..]),
    "adamw" => AdamWBenchmark.Run(args[1..]),
    "dump" when args.Length == 2 => ModelDump.Run(args[1]),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: onnx-lora-bench graph-io [--dir out/bench] [--runs 5] [--random] | adamw [steps] | dump MODEL");
    return 2;
}
