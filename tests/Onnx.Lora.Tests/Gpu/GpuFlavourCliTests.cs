using System.Diagnostics;
using System.Runtime.InteropServices;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Generation;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Gpu;

/// <summary>
/// The Gpu flavour of the CLI (built with -p:OrtFlavour=Gpu into tools/Onnx.Lora.Cli/bin/gpu; tools/test.sh builds it
/// first) on a machine without CUDA libraries, as CI is: selecting cuda / tensorrt fails with one line naming the
/// missing libraries and exit code 8, and the CPU provider of the same build still works.
/// </summary>
[TestClass]
public sealed class GpuFlavourCliTests
{
    private const int ProviderUnavailable = 8;

    public TestContext TestContext { get; set; } = null!;

    internal static string GpuCli => Path.Combine(Fixtures.RepoRoot, "tools", "Onnx.Lora.Cli", "bin", "gpu", "Release", "net10.0", "onnx-lora.dll");

    [TestMethod]
    public void GpuBuild_ShipsTheCudaAndTensorRtProviderLibraries()
    {
        string native = NativeFolder();

        Assert.IsTrue(File.Exists(Path.Combine(native, "libonnxruntime_providers_cuda.so")), native);
        Assert.IsTrue(File.Exists(Path.Combine(native, "libonnxruntime_providers_tensorrt.so")), native);
    }

    [TestMethod]
    [DataRow("cuda", "libcublasLt.so.13")]
    [DataRow("tensorrt", "libnvinfer.so.10")]
    public void Generate_GpuProviderWithoutCudaLibraries_OneLineNamingTheMissingLibrariesAndExit8(string provider, string missing)
    {
        RequireNoCuda();

        (int code, string stdout, string stderr) = RunGpuCli("generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--prompt", "Hi", "--execution-provider", provider);

        Assert.AreEqual(ProviderUnavailable, code, stderr);
        Assert.AreEqual("", stdout);
        string[] lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.HasCount(1, lines, stderr);
        StringAssert.StartsWith(lines[0], "onnx-lora generate: error: ");
        StringAssert.Contains(lines[0], missing);
        StringAssert.Contains(lines[0], "LD_LIBRARY_PATH=");
        StringAssert.Contains(lines[0], "nvidia/cublas/lib");
    }

    [TestMethod]
    public void Train_CudaWithoutCudaLibraries_Exit8BeforeAnyModelWork()
    {
        RequireNoCuda();
        using var dir = new TempDir();
        File.WriteAllText(dir.File("d.jsonl"), "{\"text\": \"Lily had a red ball.\"}\n");

        (int code, _, string stderr) = RunGpuCli("train", "--model", Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin"),
            "--tokenizer", StoriesModels.TokenizerPath, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--execution-provider", "cuda");

        Assert.AreEqual(ProviderUnavailable, code, stderr);
        Assert.HasCount(1, stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), stderr);
        StringAssert.Contains(stderr, "libcublasLt.so.13");
        Assert.IsFalse(Directory.Exists(dir.File("run/artifacts")), "the provider is checked before any model work");
    }

    [TestMethod]
    public void Generate_CpuProviderOfTheGpuBuild_SameTextAsTheCpuBuild()
    {
        string[] args = ["generate", StoriesModels.KvCache, "--tokenizer", StoriesModels.TokenizerPath, "--prompt", "Lily had a red ball", "--max-tokens", "30"];

        (int code, string gpuBuild, string stderr) = RunGpuCli(args);
        (int cpuCode, string cpuBuild, string cpuStderr) = CliRunner.Run(args);

        Assert.AreEqual(0, code, stderr);
        Assert.AreEqual(0, cpuCode, cpuStderr);
        Assert.AreEqual(cpuBuild, gpuBuild);
    }

    private static string NativeFolder()
    {
        Assert.IsTrue(File.Exists(GpuCli), $"The Gpu flavour is not built at {GpuCli}; tools/test.sh builds it (dotnet build tools/Onnx.Lora.Cli -c Release -p:OrtFlavour=Gpu).");
        return Path.Combine(Path.GetDirectoryName(GpuCli)!, "runtimes", "linux-x64", "native");
    }

    private static void RequireNoCuda()
    {
        Assert.IsTrue(OperatingSystem.IsLinux(), "the Gpu flavour's failure path is checked on Linux (the CI platform)");
        if (NativeLibrary.TryLoad("libcublasLt.so.13", out IntPtr handle))
        {
            NativeLibrary.Free(handle);
            Assert.Inconclusive("CUDA 13 libraries are installed on this machine: the missing-library path cannot be shown here (tools/gpu/run-h200.sh covers the working path).");
        }
    }

    private (int ExitCode, string Stdout, string Stderr) RunGpuCli(params string[] arguments)
    {
        NativeFolder();
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(GpuCli);
        foreach (string a in arguments)
        {
            start.ArgumentList.Add(a);
        }

        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync(TestContext.CancellationToken);
        string stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr);
    }
}
