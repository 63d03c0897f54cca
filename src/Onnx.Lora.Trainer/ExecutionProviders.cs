using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Gpu;

namespace Onnx.Lora.Trainer;

/// <summary>Execution providers the trainer can run its graphs on.</summary>
public enum ExecutionProvider
{
    /// <summary>CPU (MLAS); always available.</summary>
    Cpu,

    /// <summary>NVIDIA CUDA; needs the Gpu flavour (Microsoft.ML.OnnxRuntime.Gpu, CUDA 13, cuDNN 9).</summary>
    Cuda,

    /// <summary>NVIDIA TensorRT, with CUDA for the nodes TensorRT does not take; needs the Gpu flavour and TensorRT libraries.</summary>
    TensorRT,
}

/// <summary>Session options per execution provider, with a clear error when the runtime lacks the provider.</summary>
public static class ExecutionProviders
{
    /// <summary>Parses "cpu", "cuda" or "tensorrt" (case-insensitive).</summary>
    /// <exception cref="LoraException">Unknown name.</exception>
    public static ExecutionProvider Parse(string name) => name?.Trim().ToUpperInvariant() switch
    {
        "CPU" => ExecutionProvider.Cpu,
        "CUDA" => ExecutionProvider.Cuda,
        "TENSORRT" or "TRT" => ExecutionProvider.TensorRT,
        _ => throw new LoraException($"Unknown execution provider '{name}'; expected cpu, cuda or tensorrt."),
    };

    /// <summary>Creates session options for <paramref name="provider"/>.</summary>
    /// <param name="provider">Execution provider.</param>
    /// <param name="intraOpThreads">Intra-op threads (0 = ORT's default).</param>
    /// <param name="deviceId">GPU device id.</param>
    /// <param name="allowSpinning">Whether ORT's thread pools busy-wait for work (null = ORT's default, which spins).
    /// Spinning saves a wake-up per op on an idle machine but burns the cores that other processes need on a shared
    /// one, where 2 spinning threads run several times slower than 2 sleeping ones.</param>
    /// <param name="gpu">CUDA / TensorRT settings (null = <see cref="GpuProviderOptions"/>' defaults); ignored on the CPU.</param>
    /// <exception cref="ExecutionProviderException">The ONNX Runtime in use does not include the provider, or its native
    /// libraries (CUDA, cuDNN, TensorRT) cannot be loaded.</exception>
    public static SessionOptions CreateSessionOptions(ExecutionProvider provider, int intraOpThreads = 0, int deviceId = 0, bool? allowSpinning = null, GpuProviderOptions? gpu = null)
    {
        // Trainable tensors are graph inputs with initializer defaults by design; ORT warns about each one, so log errors only.
        var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        if (intraOpThreads > 0)
        {
            options.IntraOpNumThreads = intraOpThreads;
        }

        if (allowSpinning is { } spin)
        {
            options.AddSessionConfigEntry("session.intra_op.allow_spinning", spin ? "1" : "0");
            options.AddSessionConfigEntry("session.inter_op.allow_spinning", spin ? "1" : "0");
        }

        try
        {
            if (provider != ExecutionProvider.Cpu)
            {
                AppendGpuProvider(options, provider, deviceId, gpu ?? new GpuProviderOptions());
            }

            return options;
        }
        catch (OnnxRuntimeException e)
        {
            options.Dispose();
            throw new ExecutionProviderException($"Could not start the {provider} execution provider on device {deviceId}: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        catch
        {
            options.Dispose();
            throw;
        }
    }

    /// <summary>The ORT name of <paramref name="provider"/>, as <see cref="OrtEnv.GetAvailableProviders"/> lists it.</summary>
    public static string OrtName(ExecutionProvider provider) => provider switch
    {
        ExecutionProvider.Cuda => "CUDAExecutionProvider",
        ExecutionProvider.TensorRT => "TensorrtExecutionProvider",
        _ => "CPUExecutionProvider",
    };

    private static void AppendGpuProvider(SessionOptions options, ExecutionProvider provider, int deviceId, GpuProviderOptions gpu)
    {
        string[] available = OrtEnv.Instance().GetAvailableProviders();
        if (!available.Contains(OrtName(provider)))
        {
            throw new ExecutionProviderException(
                $"The {provider} execution provider is not in this ONNX Runtime build (it offers: {string.Join(", ", available)}); " +
                "this is the CPU build: use the Gpu flavour (tools/onnx-lora --gpu, or build with -p:OrtFlavour=Gpu, which references Microsoft.ML.OnnxRuntime.Gpu: Linux/Windows x64, CUDA 13, cuDNN 9" +
                (provider == ExecutionProvider.TensorRT ? ", plus TensorRT 10 libraries" : "") + "), or use the cpu provider.");
        }

        // Before ORT tries: its own failure is a log on stderr and "Failed to load shared library", naming nothing.
        ProviderLibraryProbe.EnsureLoadable(provider);
        if (gpu.Deterministic)
        {
            // The C API's SetDeterministicCompute; the C# binding exposes it only as this config key.
            options.AddSessionConfigEntry("session.use_deterministic_compute", "1");
        }

        if (provider == ExecutionProvider.TensorRT)
        {
            using var trt = new OrtTensorRTProviderOptions();
            trt.UpdateOptions(gpu.TensorRtProviderOptions(deviceId));
            options.AppendExecutionProvider_Tensorrt(trt);
        }

        // TensorRT takes the subgraphs it can; CUDA runs the rest (ORT assigns nodes in provider order).
        using var cuda = new OrtCUDAProviderOptions();
        cuda.UpdateOptions(gpu.CudaProviderOptions(deviceId));
        options.AppendExecutionProvider_CUDA(cuda);
    }
}
