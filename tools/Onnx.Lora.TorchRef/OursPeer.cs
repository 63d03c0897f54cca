namespace Onnx.Lora.TorchRef;

/// <summary>Our ONNX trainer as the second peer. Wired once Onnx.Lora.Trainer's LoraTrainingSession is on main.</summary>
internal static class OursPeer
{
    public static bool Available => false;
}
