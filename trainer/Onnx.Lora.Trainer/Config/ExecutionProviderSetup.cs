using Microsoft.ML.OnnxRuntime;

namespace Onnx.Lora.Trainer.Config;

/// <summary>
/// Applies <see cref="TrainOptions.ExecutionProvider"/>, <see cref="TrainOptions.DeviceId"/> and
/// <see cref="TrainOptions.IntraOpThreads"/> to ORT session options, refusing up front a provider that this ORT
/// build does not contain, with the NuGet package that provides it.
/// </summary>
public static class ExecutionProviderSetup
{
    /// <summary>ORT's name of the provider for an option value (cpu, cuda, tensorrt).</summary>
    public static string OrtName(string provider) => provider switch
    {
        "cpu" => "CPUExecutionProvider",
        "cuda" => "CUDAExecutionProvider",
        "tensorrt" => "TensorrtExecutionProvider",
        _ => throw new ConfigException($"'execution_provider': '{provider}' is not one of {string.Join(", ", TrainOptions.KnownExecutionProviders)}."),
    };

    /// <summary>The NuGet package whose ORT build contains the provider.</summary>
    public static string PackageFor(string provider) => provider switch
    {
        "cuda" => "Microsoft.ML.OnnxRuntime.Gpu (Linux/Windows, with CUDA 12 and cuDNN 9 installed)",
        "tensorrt" => "Microsoft.ML.OnnxRuntime.Gpu (with TensorRT 10 libraries on the library path)",
        _ => "Microsoft.ML.OnnxRuntime",
    };

    /// <summary>Throws when <paramref name="provider"/> is not in <paramref name="availableProviders"/> (ORT's names).</summary>
    /// <exception cref="ConfigException">The provider is missing; the message names the package that has it.</exception>
    public static void EnsureAvailable(string provider, IReadOnlyCollection<string> availableProviders)
    {
        ArgumentNullException.ThrowIfNull(availableProviders);
        string ortName = OrtName(provider);
        if (!availableProviders.Contains(ortName))
        {
            throw new ConfigException(
                $"'execution_provider': this ONNX Runtime build has no {ortName} (it has {string.Join(", ", availableProviders)}). " +
                $"Install {PackageFor(provider)} instead of the CPU-only Microsoft.ML.OnnxRuntime package, or use --execution-provider cpu.");
        }
    }

    /// <summary>Configures <paramref name="session"/> for <paramref name="options"/>.</summary>
    /// <exception cref="ConfigException">The provider is not in this ORT build, or failed to initialise on the device.</exception>
    public static void Apply(SessionOptions session, TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(options);
        if (options.IntraOpThreads > 0)
        {
            session.IntraOpNumThreads = options.IntraOpThreads;
        }

        if (options.ExecutionProvider == "cpu")
        {
            return;
        }

        EnsureAvailable(options.ExecutionProvider, OrtEnv.Instance().GetAvailableProviders());
        try
        {
            if (options.ExecutionProvider == "cuda")
            {
                session.AppendExecutionProvider_CUDA(options.DeviceId);
            }
            else
            {
                session.AppendExecutionProvider_Tensorrt(options.DeviceId);
            }
        }
        catch (OnnxRuntimeException e)
        {
            throw new ConfigException($"'execution_provider': {OrtName(options.ExecutionProvider)} failed on device {options.DeviceId}: {e.Message}", e);
        }
    }
}
