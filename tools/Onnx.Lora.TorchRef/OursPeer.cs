namespace Onnx.Lora.TorchRef;

/// <summary>Our ONNX trainer as the second peer. Wired once Onnx.Lora.Trainer's LoraTrainingSession is on main.</summary>
internal static class OursPeer
{
    public static bool Available => false;

    public static ITrainingPeer Create(string loraModelPath, AdamWSettings adamw, int threads) =>
        throw new NotSupportedException($"Our trainer (LoraTrainingSession) is not in this build yet; cannot train '{loraModelPath}' with {adamw} on {threads} threads.");
}
