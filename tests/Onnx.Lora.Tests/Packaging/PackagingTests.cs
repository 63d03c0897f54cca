using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Xml.Linq;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Packaging;

/// <summary>
/// The packages as a user gets them: <c>dotnet pack</c> of the solution (once for the class) into a folder feed, the CLI
/// installed from it with <c>dotnet tool install --add-source</c> and run, and README's "Use it from .NET" sample compiled
/// in a fresh console project against the packed <c>Onnx.Lora.Api</c> package (no project reference) and run.
/// </summary>
[TestClass]
public sealed class PackagingTests
{
    private static readonly TimeSpan s_limit = TimeSpan.FromMinutes(10);
    private static PackedFeed? s_feed;

    private static PackedFeed Feed => s_feed ?? throw new InvalidOperationException("The class initializer did not pack.");

    [ClassInitialize]
    public static void PackOnce(TestContext context)
    {
        s_feed = PackedFeed.Create();
        context.WriteLine($"dotnet pack: {s_feed.PackTime.TotalSeconds:F1} s, {string.Join(", ", s_feed.PackageIds)}");
    }

    [ClassCleanup]
    public static void DeleteFeed() => s_feed?.Dispose();

    [TestMethod]
    public void Pack_Solution_PacksEveryLibraryAndTheToolWithOneVersionAndNoTestsOrBenchmarks()
    {
        // The rule of Directory.Build.targets, read from the projects themselves: whatever their names or folders.
        var expected = new List<string>();
        foreach (string project in SolutionProjects())
        {
            string text = File.ReadAllText(project);
            bool test = text.Contains("Sdk=\"MSTest.Sdk\"", StringComparison.Ordinal);
            bool exe = text.Contains("<OutputType>Exe</OutputType>", StringComparison.Ordinal);
            bool tool = text.Contains("<PackAsTool>true</PackAsTool>", StringComparison.Ordinal);
            if (!test && (!exe || tool))
            {
                expected.Add(XDocument.Parse(text).Descendants("PackageId").FirstOrDefault()?.Value ?? Path.GetFileNameWithoutExtension(project));
            }
        }

        CollectionAssert.AreEqual(expected.Order(StringComparer.Ordinal).ToList(), Feed.PackageIds.ToList());
        CollectionAssert.IsSubsetOf(new[] { "Onnx.Lora", "Onnx.Lora.Api", "Onnx.Lora.Cli" }, Feed.PackageIds.ToList());
        foreach (string id in Feed.PackageIds)
        {
            XElement metadata = XDocument.Parse(Feed.ReadNuspec(id)).Root!.Elements().Single(e => e.Name.LocalName == "metadata");
            string Field(string name) => metadata.Elements().SingleOrDefault(e => e.Name.LocalName == name)?.Value ?? "";
            Assert.AreEqual(Feed.Version, Field("version"), id);
            Assert.IsTrue(Field("description").Length > 40 && Field("description") != "Package Description", $"{id}: description '{Field("description")}'");
            Assert.AreEqual("README.md", Field("readme"), id);
            CollectionAssert.Contains(Feed.Entries(id).ToList(), "README.md", id);
            // A package built from a project reference depends on that package at the same version (NuGet's "0.1.0" is ">= 0.1.0").
            foreach (XElement dependency in metadata.Descendants().Where(e => e.Name.LocalName == "dependency" && e.Attribute("id")!.Value.StartsWith("Onnx.Lora", StringComparison.Ordinal)))
            {
                Assert.AreEqual(Feed.Version, dependency.Attribute("version")!.Value, $"{id} → {dependency.Attribute("id")!.Value}");
            }
        }

        Assert.Contains("DotnetTool", Feed.ReadNuspec("Onnx.Lora.Cli"));
        IReadOnlyList<string> toolEntries = Feed.Entries("Onnx.Lora.Cli");
        CollectionAssert.Contains(toolEntries.ToList(), "tools/net10.0/any/runtimes/linux-x64/native/libonnxruntime.so");
        Assert.IsFalse(toolEntries.Any(e => e.Contains("runtimes/android/", StringComparison.Ordinal) || e.EndsWith(".lib", StringComparison.Ordinal)),
            "mobile natives or .lib files in the tool package");
    }

    [TestMethod]
    public void ToolInstall_FromThePackedFeed_RunsVersionAndRealVerbsLikeTheInProcessCli()
    {
        string toolPath = Path.Combine(Feed.Work, "tools");
        var clock = Stopwatch.StartNew();
        (int code, string output, string error) = DotnetCommand.Run(Feed.Work, s_limit,
            "tool", "install", "Onnx.Lora.Cli", "--tool-path", toolPath, "--configfile", Feed.NuGetConfig, "--add-source", Feed.Feed, "--version", Feed.Version);
        Assert.AreEqual(0, code, $"dotnet tool install failed:\n{output}\n{error}");
        Console.WriteLine($"dotnet tool install: {clock.Elapsed.TotalSeconds:F1} s");
        string onnxLora = Path.Combine(toolPath, OperatingSystem.IsWindows() ? "onnx-lora.exe" : "onnx-lora");

        (code, output, error) = DotnetCommand.RunProgram(onnxLora, Feed.Work, s_limit, "--version");
        Assert.AreEqual(0, code, error);
        Assert.StartsWith(Feed.Version, output.Trim());

        string model = Path.Combine(Feed.Work, "stories260K.onnx");
        string checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
        (code, _, error) = DotnetCommand.RunProgram(onnxLora, Feed.Work, s_limit, "convert-llama2c", checkpoint, "-o", model);
        Assert.AreEqual(0, code, error);
        (code, output, error) = DotnetCommand.RunProgram(onnxLora, Feed.Work, s_limit, "inspect", model);
        Assert.AreEqual(0, code, error);

        // The installed tool (ONNX Runtime's natives included) says exactly what the CLI built here says.
        (int inProcessCode, string inProcess, _) = CliRunner.Run("inspect", model);
        Assert.AreEqual(0, inProcessCode);
        Assert.AreEqual(inProcess, output);
        Assert.Contains("linear layers LoRA can target: 35", output);
    }

    [TestMethod]
    public void ReadmeSample_CompiledAgainstThePackedLibrary_TrainsMergesAndExports()
    {
        string sample = ReadmeSample();
        Assert.IsLessThanOrEqualTo(20, sample.Split('\n').Length, "README's sample is meant to fit in 20 lines");
        string project = Path.Combine(Feed.Work, "sample");
        Directory.CreateDirectory(project);
        File.WriteAllText(Path.Combine(project, "Program.cs"), sample);
        File.Copy(Feed.NuGetConfig, Path.Combine(project, "nuget.config"));
        File.WriteAllText(Path.Combine(project, "Sample.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Onnx.Lora.Api" Version="{Feed.Version}" />
              </ItemGroup>
            </Project>
            """);
        var clock = Stopwatch.StartNew();
        (int code, string output, string error) = DotnetCommand.Run(project, s_limit, "build", "-c", "Release", "-nologo", "-v", "quiet");
        Assert.AreEqual(0, code, $"the README sample does not build against the packed Onnx.Lora.Api:\n{output}\n{error}");
        Console.WriteLine($"sample restore + build: {clock.Elapsed.TotalSeconds:F1} s");
        // The library came from the feed as a package, not from this repository's projects.
        Assert.IsTrue(Directory.Exists(Path.Combine(Feed.Work, "packages", "onnx.lora.api", Feed.Version)), "Onnx.Lora.Api was not restored from the packed feed");

        // The sample's relative paths name the embedded model and data: give it a copy of them in its own folder.
        string run = Path.Combine(Feed.Work, "run");
        foreach (string file in new[] { "stories260K/stories260K.bin", "stories260K/tok512.model", "data/tiny-stories.jsonl" })
        {
            string target = Path.Combine(run, "models", "default", file);
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(Path.Combine(Fixtures.RepoRoot, "models", "default", file), target);
        }

        clock.Restart();
        (code, output, error) = DotnetCommand.Run(run, s_limit, Path.Combine(project, "bin", "Release", "net10.0", "Sample.dll"));
        Assert.AreEqual(0, code, $"the README sample failed:\n{output}\n{error}");
        Console.WriteLine($"sample run: {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Contains("step 20/20 loss ", output); // IProgress<StepReport> was called.

        string outDir = Path.Combine(run, "out", "sample");
        using JsonDocument summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "summary.json")));
        Assert.AreEqual("completed", summary.RootElement.GetProperty("outcome").GetString());
        double first = summary.RootElement.GetProperty("first_train_loss").GetDouble();
        double last = summary.RootElement.GetProperty("last_train_loss").GetDouble();
        Assert.IsTrue(double.IsFinite(first) && double.IsFinite(last), $"loss {first} → {last}");
        Assert.IsTrue(File.Exists(Path.Combine(outDir, "adapter", "adapter_model.safetensors")), "no PEFT adapter");

        // Independent readers: ONNX Runtime loads the merged model and the adapter; the merged graph has no LoRA left.
        string merged = Path.Combine(outDir, "merged.onnx");
        using (Model model = OnnxReader.Load(merged))
        {
            Assert.IsNull(LoraManifest.Read(model), "the merged model still carries LoRA");
        }

        using (var session = new InferenceSession(merged))
        {
            Assert.IsNotEmpty(session.OutputMetadata);
        }

        using OrtLoraAdapter adapter = OrtLoraAdapter.Create(Path.Combine(outDir, "stories.onnx_adapter"), null);
        Assert.IsNotNull(adapter);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"sample loss {first:F3} → {last:F3}"));
    }

    /// <summary>The first C# block of README's "Use it from .NET" section.</summary>
    private static string ReadmeSample()
    {
        string readme = File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "README.md")).ReplaceLineEndings("\n");
        int section = readme.IndexOf("\n## Use it from .NET\n", StringComparison.Ordinal);
        Assert.IsGreaterThanOrEqualTo(0, section, "README has no '## Use it from .NET' section");
        int start = readme.IndexOf("\n```csharp\n", section, StringComparison.Ordinal) + "\n```csharp\n".Length;
        int end = readme.IndexOf("\n```\n", start, StringComparison.Ordinal);
        Assert.IsTrue(start > section && end > start, "no ```csharp block in README's 'Use it from .NET'");
        return readme[start..end];
    }

    private static IEnumerable<string> SolutionProjects() =>
        File.ReadAllLines(Path.Combine(Fixtures.RepoRoot, "Onnx.Lora.sln"))
            .Where(l => l.StartsWith("Project(", StringComparison.Ordinal) && l.Contains(".csproj", StringComparison.Ordinal))
            .Select(l => l.Split('"')[5].Replace('\\', Path.DirectorySeparatorChar))
            .Select(p => Path.Combine(Fixtures.RepoRoot, p));
}
