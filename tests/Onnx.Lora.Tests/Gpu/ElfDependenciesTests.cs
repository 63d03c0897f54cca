using System.Diagnostics;
using Onnx.Lora.Trainer.Gpu;

namespace Onnx.Lora.Tests.Gpu;

[TestClass]
public sealed class ElfDependenciesTests
{
    [TestMethod]
    public void Read_CudaProviderLibrary_SameListAsReadelf()
    {
        string library = Path.Combine(Path.GetDirectoryName(GpuFlavourCliTests.GpuCli)!, "runtimes", "linux-x64", "native", "libonnxruntime_providers_cuda.so");
        Assert.IsTrue(File.Exists(library), $"{library} is missing: the Gpu flavour is not built (tools/test.sh builds it).");

        IReadOnlyList<string>? needed = ElfDependencies.Read(library);

        Assert.IsNotNull(needed);
        CollectionAssert.AreEqual(Readelf(library), needed.ToArray());
        CollectionAssert.Contains(needed.ToList(), "libcublasLt.so.13");
    }

    [TestMethod]
    public void Read_NotAnElfFile_ReturnsNull()
    {
        string path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "#!/bin/sh\necho not a library\n");
            Assert.IsNull(ElfDependencies.Read(path));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void MissingDependencies_CudaProviderWithoutCuda_NamesCublasAndNotLibc()
    {
        string library = Path.Combine(Path.GetDirectoryName(GpuFlavourCliTests.GpuCli)!, "runtimes", "linux-x64", "native", "libonnxruntime_providers_cuda.so");
        Assert.IsTrue(File.Exists(library), library);

        IReadOnlyList<string> missing = ProviderLibraryProbe.MissingDependencies(library);

        if (System.Runtime.InteropServices.NativeLibrary.TryLoad("libcublasLt.so.13", out _))
        {
            Assert.Inconclusive("CUDA 13 is installed on this machine.");
        }

        CollectionAssert.Contains(missing.ToArray(), "libcublasLt.so.13");
        CollectionAssert.DoesNotContain(missing.ToArray(), "libc.so.6");
    }

    /// <summary>binutils' readelf, the independent reference (installed by .ci/run).</summary>
    private static string[] Readelf(string library)
    {
        var start = new ProcessStartInfo("readelf", ["-d", "-W", library]) { RedirectStandardOutput = true };
        using Process process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode);
        return output.Split('\n').Where(l => l.Contains("(NEEDED)", StringComparison.Ordinal))
            .Select(l => l[(l.IndexOf('[', StringComparison.Ordinal) + 1)..l.LastIndexOf(']')]).ToArray();
    }
}
