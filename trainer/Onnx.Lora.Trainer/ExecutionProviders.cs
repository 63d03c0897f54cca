using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Graph;

namespace Onnx.Lora.Trainer;

/// <summary>Execution providers the trainer can run its graphs on.</summary>
public enum ExecutionProvider
{
    /// <summary>CPU (MLAS); always available.</summary>
    Cpu,

    /// <summary>NVIDIA CUDA; needs the Microsoft.ML.OnnxRuntime.Gpu package.</summary>
    Cuda,

    /// <summary>NVIDIA TensorRT; needs the Microsoft.ML.OnnxRuntime.Gpu package and TensorRT libraries.</summary>
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
    /// <exception cref="LoraException">The ONNX Runtime in use does not include the provider.</exception>
    public static SessionOptions CreateSessionOptions(ExecutionProvider provider, int intraOpThreads = 0, int deviceId = 0, bool? allowSpinning = null)
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
            string ortName = provider switch
            {
                ExecutionProvider.Cuda => "CUDAExecutionProvider",
                ExecutionProvider.TensorRT => "TensorrtExecutionProvider",
                _ => "CPUExecutionProvider",
            };
            if (!OrtEnv.Instance().GetAvailableProviders().Contains(ortName))
            {
                throw new LoraException(
                    $"The {provider} execution provider is not in this ONNX Runtime build (it offers: {string.Join(", ", OrtEnv.Instance().GetAvailableProviders())}). " +
                    "Reference the Microsoft.ML.OnnxRuntime.Gpu package (Linux/Windows x64, CUDA 12" + (provider == ExecutionProvider.TensorRT ? ", plus TensorRT libraries" : "") +
                    ") instead of Microsoft.ML.OnnxRuntime, or use the cpu provider.");
            }

            switch (provider)
            {
                case ExecutionProvider.Cuda:
                    options.AppendExecutionProvider_CUDA(deviceId);
                    break;
                case ExecutionProvider.TensorRT:
                    options.AppendExecutionProvider_Tensorrt(deviceId);
                    options.AppendExecutionProvider_CUDA(deviceId);
                    break;
            }

            return options;
        }
        catch (OnnxRuntimeException e)
        {
            options.Dispose();
            throw new LoraException($"Could not start the {provider} execution provider on device {deviceId}: {e.Message}", e);
        }
        catch
        {
            options.Dispose();
            throw;
        }
    }
}
