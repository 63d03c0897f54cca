using System.Diagnostics;
using System.IO.Compression;
using System.Text.RegularExpressions;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Packaging;

/// <summary>
/// The solution packed once (<c>dotnet pack --no-build</c> of what the test run already built) into a temporary
/// folder feed, with a NuGet config that restores from that feed alone plus this machine's package cache (read-only,
/// as a fallback folder): no network, and our packages are never cached where a later run could pick up stale ones.
/// </summary>
internal sealed partial class PackedFeed : IDisposable
{
    private PackedFeed(string work, string feed, string version, TimeSpan packTime)
    {
        Work = work;
        Feed = feed;
        Version = version;
        PackTime = packTime;
        NuGetConfig = Path.Combine(work, "nuget.config");
        string machineCache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } cache ? cache
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.WriteAllText(NuGetConfig, $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="onnx-lora-feed" value="{feed}" />
              </packageSources>
              <fallbackPackageFolders>
                <clear />
                <add key="machine-cache" value="{machineCache}" />
              </fallbackPackageFolders>
              <config>
                <add key="globalPackagesFolder" value="{Path.Combine(work, "packages")}" />
              </config>
            </configuration>
            """);
    }

    /// <summary>The build configuration of this test assembly, which the packed projects were built in too.</summary>
    public static string Configuration =>
#if DEBUG
        "Debug";
#else
        "Release";
#endif

    /// <summary>Scratch folder owning the feed, the config and everything a test installs.</summary>
    public string Work { get; }

    /// <summary>The folder feed holding the .nupkg files.</summary>
    public string Feed { get; }

    /// <summary>The one version every package carries.</summary>
    public string Version { get; }

    /// <summary>How long <c>dotnet pack</c> took.</summary>
    public TimeSpan PackTime { get; }

    /// <summary>A nuget.config with only <see cref="Feed"/> as source and the machine's cache as fallback folder.</summary>
    public string NuGetConfig { get; }

    /// <summary>The package ids in the feed.</summary>
    public IReadOnlyList<string> PackageIds => Directory.EnumerateFiles(Feed, "*.nupkg")
        .Select(f => Path.GetFileName(f)[..^($".{Version}.nupkg".Length)]).Order(StringComparer.Ordinal).ToList();

    /// <summary>Packs the solution into a new temporary feed.</summary>
    public static PackedFeed Create()
    {
        string work = Directory.CreateTempSubdirectory("onnx-lora-packaging-").FullName;
        string feed = Path.Combine(work, "feed");
        var clock = Stopwatch.StartNew();
        (int code, string output, string error) = DotnetCommand.Run(Fixtures.RepoRoot, TimeSpan.FromMinutes(10),
            "pack", "Onnx.Lora.sln", "-c", Configuration, "--no-build", "-o", feed, "-nologo", "-v", "quiet");
        Assert.AreEqual(0, code, $"dotnet pack failed:\n{output}\n{error}");
        string cli = Directory.EnumerateFiles(feed, "Onnx.Lora.Cli.*.nupkg").Single();
        string version = CliPackageVersion().Match(Path.GetFileName(cli)).Groups[1].Value;
        return new PackedFeed(work, feed, version, clock.Elapsed);
    }

    /// <summary>The nuspec inside package <paramref name="id"/>.</summary>
    public string ReadNuspec(string id)
    {
        using ZipArchive zip = ZipFile.OpenRead(Path.Combine(Feed, $"{id}.{Version}.nupkg"));
        using var reader = new StreamReader(zip.Entries.Single(e => e.FullName == $"{id}.nuspec").Open());
        return reader.ReadToEnd();
    }

    /// <summary>The entry names inside package <paramref name="id"/>.</summary>
    public IReadOnlyList<string> Entries(string id)
    {
        using ZipArchive zip = ZipFile.OpenRead(Path.Combine(Feed, $"{id}.{Version}.nupkg"));
        return zip.Entries.Select(e => e.FullName).ToList();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            Directory.Delete(Work, recursive: true);
        }
        catch (IOException)
        {
            // A leftover temp folder is not a test failure.
        }
    }

    [GeneratedRegex(@"^Onnx\.Lora\.Cli\.(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)\.nupkg$")]
    private static partial Regex CliPackageVersion();
}
