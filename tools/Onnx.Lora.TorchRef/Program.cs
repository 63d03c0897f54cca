using Onnx.Lora.Ir;
using Onnx.Lora.TorchRef;

if (args.Length == 0)
{
    Console.Error.WriteLine("usage: onnx-lora-torchref <inject|forward|train|train-ours|parity|sgemm|bench|scale|make-model> [--options]");
    return 2;
}

try
{
    var options = new Args(args.Skip(1));
    return args[0] switch
    {
        "inject" => Verbs.Inject(options),
        "forward" => Verbs.Forward(options),
        "train" => Verbs.Train(options, ours: false),
        "train-ours" => Verbs.Train(options, ours: true),
        "parity" => Verbs.Parity(options),
        "sgemm" => Verbs.Sgemm(options),
        "make-model" => Verbs.MakeModel(options),
        "bench" => Verbs.Bench(options),
        "scale" => ScaleBench.Run(options),
        _ => throw new ArgumentException($"Unknown verb '{args[0]}'."),
    };
}
catch (Exception e) when (e is ToolchainException or ArgumentException or IOException or NotSupportedException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
