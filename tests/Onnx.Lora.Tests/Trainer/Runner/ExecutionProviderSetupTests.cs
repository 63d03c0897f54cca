using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Config;

namespace Onnx.Lora.Tests.Trainer.Runner;

[TestClass]
public sealed class ExecutionProviderSetupTests
{
    [TestMethod]
    public void Apply_CudaOnCpuOnlyRuntime_NamesTheGpuPackage()
    {
        string[] available = OrtEnv.Instance().GetAvailableProviders();
        if (available.Contains("CUDAExecutionProvider"))
        {
            Assert.Inconclusive("This ORT build has CUDA; the missing-provider path cannot be observed here.");
        }

        using var session = new SessionOptions();
        var options = new TrainOptions { Model = "m", Data = "d", Tokenizer = "t", ExecutionProvider = "cuda" };
        var e = Assert.ThrowsExactly<ConfigException>(() => ExecutionProviderSetup.Apply(session, options));
        StringAssert.Contains(e.Message, "CUDAExecutionProvider");
        StringAssert.Contains(e.Message, "Microsoft.ML.OnnxRuntime.Gpu");
    }

    [TestMethod]
    public void EnsureAvailable_ProviderPresent_DoesNotThrow() =>
        ExecutionProviderSetup.EnsureAvailable("tensorrt", ["TensorrtExecutionProvider", "CPUExecutionProvider"]);

    [TestMethod]
    public void Apply_CpuWithThreads_SetsIntraOpThreads()
    {
        using var session = new SessionOptions();
        ExecutionProviderSetup.Apply(session, new TrainOptions { Model = "m", Data = "d", Tokenizer = "t", IntraOpThreads = 2 });
        Assert.AreEqual(2, session.IntraOpNumThreads);
    }
}
