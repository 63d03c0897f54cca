using System.Runtime.InteropServices;

namespace Onnx.Lora.Trainer.Gpu;

/// <summary>
/// Checks, before ONNX Runtime tries, that a GPU provider's native library and every library it needs can be loaded.
/// ORT's own failure is a multi-line log on stderr plus "Failed to load shared library" with no name; this probe names
/// every missing library (libcublasLt.so.13, libcudnn.so.9, ...) in one line, and says how to point the loader at them.
/// </summary>
internal static class ProviderLibraryProbe
{
    /// <summary>What a user of pip's CUDA wheels (or of a CUDA install) sets so that the loader finds the libraries.</summary>
    internal const string LoaderHint =
        "install CUDA 13 and cuDNN 9 (TensorRT 10 for tensorrt) with an NVIDIA driver (libcuda.so.1), or point the loader at them, " +
        "e.g. LD_LIBRARY_PATH=$SITE/nvidia/cublas/lib:$SITE/nvidia/cudnn/lib:$SITE/nvidia/cuda_runtime/lib:$SITE/nvidia/curand/lib " +
        "for the nvidia-*-cu13 pip wheels in a Python site-packages folder $SITE (or /usr/local/cuda-13/lib64)";

    /// <summary>
    /// Throws when <paramref name="provider"/>'s library is present but cannot be loaded; does nothing when the library is
    /// not found beside ONNX Runtime (ORT then reports it) or on a platform this probe does not read (Windows).
    /// </summary>
    /// <exception cref="ExecutionProviderException">Libraries the provider needs cannot be loaded.</exception>
    public static void EnsureLoadable(ExecutionProvider provider)
    {
        if (!OperatingSystem.IsLinux() || provider == ExecutionProvider.Cpu)
        {
            return;
        }

        string[] libraries = provider == ExecutionProvider.TensorRT
            ? ["libonnxruntime_providers_tensorrt.so", "libonnxruntime_providers_cuda.so"]
            : ["libonnxruntime_providers_cuda.so"];
        var missing = new List<string>();
        foreach (string library in libraries)
        {
            if (Locate(library) is { } path)
            {
                missing.AddRange(MissingDependencies(path).Where(m => !missing.Contains(m)));
            }
        }

        if (missing.Count > 0)
        {
            throw new ExecutionProviderException(
                $"The {provider} execution provider cannot start: {libraries[0]} needs {string.Join(", ", missing)}, which the loader cannot find; {LoaderHint}.");
        }
    }

    /// <summary>Libraries <paramref name="path"/> needs that neither the loader's search path nor its own folder provides.</summary>
    internal static IReadOnlyList<string> MissingDependencies(string path)
    {
        IReadOnlyList<string>? needed;
        try
        {
            needed = ElfDependencies.Read(path);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return [];
        }

        string folder = Path.GetDirectoryName(path)!;
        return (needed ?? []).Where(name => !CanLoad(name) && !CanLoad(Path.Combine(folder, name))).ToArray();
    }

    private static bool CanLoad(string name)
    {
        // NOTE: a library that loads stays loaded (no dlclose): ORT loads the same ones right after, so nothing is wasted.
        return NativeLibrary.TryLoad(name, out _);
    }

    /// <summary>Where the .NET host found ONNX Runtime's natives: the app folder (self-contained) or runtimes/RID/native.</summary>
    private static string? Locate(string library)
    {
        var folders = new List<string> { AppContext.BaseDirectory };
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string searchDirectories)
        {
            folders.AddRange(searchDirectories.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        }

        return folders.Select(f => Path.Combine(f, library)).FirstOrDefault(File.Exists);
    }
}
