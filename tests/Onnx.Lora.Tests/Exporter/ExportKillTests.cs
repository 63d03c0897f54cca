using System.Diagnostics;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// <c>onnx-lora merge</c> and <c>export-adapter</c> SIGKILLed at seeded random moments never leave a file that looks
/// complete: under the final names there is nothing, the previous complete output, or the new complete output, and
/// never a model beside a data file (or a PEFT config beside weights) of another write.
/// </summary>
[TestClass]
public sealed class ExportKillTests
{
    // The "new" and "old" outputs differ in shape, so a model of one beside the data of the other is detectable.
    private static readonly LlamaConfig s_new = new() { Layers = 4, Hidden = 256, Heads = 4, KvHeads = 2, Intermediate = 1024, Vocab = 4000, MaxPositions = 128, Naming = InitializerNaming.Named };
    private static readonly LlamaConfig s_old = s_new with { Intermediate = 768, Seed = 5 };

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Merge_KilledAtSeededRandomMoments_LeavesNothingOrACompleteMatchingPair()
    {
        var random = new Random(20240612);
        using var dir = new TempDir();
        string loraNew = LoraModel(dir.File("new-lora.onnx"), s_new, rank: 8);
        string loraOld = LoraModel(dir.File("old-lora.onnx"), s_old, rank: 4);
        var clock = Stopwatch.StartNew();
        Assert.AreEqual(0, CliProcess.Run(["merge", loraNew, "-o", dir.File("ref-new/merged.onnx")]));
        TimeSpan full = clock.Elapsed;
        Assert.AreEqual(0, CliProcess.Run(["merge", loraOld, "-o", dir.File("ref-old/merged.onnx")]));
        var versions = new Dictionary<string, (byte[] Model, byte[] Data)>
        {
            ["new"] = (File.ReadAllBytes(dir.File("ref-new/merged.onnx")), File.ReadAllBytes(dir.File("ref-new/merged.onnx.data"))),
            ["old"] = (File.ReadAllBytes(dir.File("ref-old/merged.onnx")), File.ReadAllBytes(dir.File("ref-old/merged.onnx.data"))),
        };
        CollectionAssert.AreNotEqual(versions["new"].Model, versions["old"].Model, "the two versions must be told apart");
        TestContext.WriteLine($"complete merge (process start included): {full.TotalMilliseconds:F0} ms, data {versions["new"].Data.Length:N0} bytes");

        string outDir = dir.File("out");
        string model = Path.Combine(outDir, "merged.onnx"), data = model + ".data";
        string[] merge = ["merge", loraNew, "-o", model];
        for (int trial = 0; trial < 4; trial++)
        {
            // Odd trials overwrite an older complete output; even ones write into an empty folder.
            Directory.CreateDirectory(outDir);
            File.Delete(model);
            File.Delete(data);
            if (trial % 2 == 1)
            {
                File.WriteAllBytes(data, versions["old"].Data);
                File.WriteAllBytes(model, versions["old"].Model);
            }

            TimeSpan at = TimeSpan.FromMilliseconds(random.NextDouble() * full.TotalMilliseconds);
            int fileEvent = 1 + random.Next(2);
            bool killed = trial < 2
                ? CliProcess.KillAtFileEvent(merge, outDir, fileEvent, path => Path.GetFileName(path).EndsWith(".tmp", StringComparison.Ordinal))
                : CliProcess.KillAfter(merge, at);
            string found = File.Exists(model) ? Matching(versions, File.ReadAllBytes(model), File.ReadAllBytes(data)) : "nothing";
            TestContext.WriteLine($"trial {trial}: {(trial < 2 ? $"at temp file #{fileEvent}" : $"at {at.TotalMilliseconds:F0} ms")} {(killed ? "killed" : "finished first")}; destination: {found}; files: {string.Join(" ", Directory.EnumerateFiles(outDir).Select(Path.GetFileName))}");
            if (trial % 2 == 1 && found == "nothing")
            {
                Assert.IsTrue(killed, "a finished merge leaves its output");
            }
        }

        // A complete run afterwards gives the exact output and removes the killed runs' temporaries.
        Assert.AreEqual(0, CliProcess.Run(merge));
        Assert.AreEqual("new", Matching(versions, File.ReadAllBytes(model), File.ReadAllBytes(data)));
        CollectionAssert.AreEquivalent((string[])["merged.onnx", "merged.onnx.data"], Directory.EnumerateFiles(outDir).Select(Path.GetFileName).ToArray());
        using Model loaded = OnnxReader.Load(model);
        Assert.IsNull(LoraManifest.Read(loaded), "a merged model carries no LoRA");
    }

    [TestMethod]
    public void ExportAdapter_KilledAtSeededRandomMoments_LeavesNothingOrACompleteMatchingAdapter()
    {
        var random = new Random(20240613);
        using var dir = new TempDir();
        string loraNew = LoraModel(dir.File("new-lora.onnx"), s_new, rank: 8);
        string loraOld = LoraModel(dir.File("old-lora.onnx"), s_old, rank: 4);
        var clock = Stopwatch.StartNew();
        Assert.AreEqual(0, CliProcess.Run(["export-adapter", loraNew, "-o", dir.File("ref-new/a.onnx_adapter"), "--peft", dir.File("ref-new/peft")]));
        TimeSpan full = clock.Elapsed;
        Assert.AreEqual(0, CliProcess.Run(["export-adapter", loraOld, "-o", dir.File("ref-old/a.onnx_adapter"), "--peft", dir.File("ref-old/peft")]));
        string[] names = ["new", "old"];
        var adapters = names.ToDictionary(n => n, n => File.ReadAllBytes(dir.File($"ref-{n}/a.onnx_adapter")));
        var peft = names.ToDictionary(n => n, n => (File.ReadAllBytes(dir.File($"ref-{n}/peft/adapter_config.json")), File.ReadAllBytes(dir.File($"ref-{n}/peft/adapter_model.safetensors"))));
        CollectionAssert.AreNotEqual(peft["new"].Item1, peft["old"].Item1, "the two configs must be told apart (rank 8 vs 4)");

        string outDir = dir.File("out");
        string adapter = Path.Combine(outDir, "a.onnx_adapter"), peftDir = Path.Combine(outDir, "peft");
        string config = Path.Combine(peftDir, "adapter_config.json"), weights = Path.Combine(peftDir, "adapter_model.safetensors");
        string[] export = ["export-adapter", loraNew, "-o", adapter, "--peft", peftDir];
        for (int trial = 0; trial < 4; trial++)
        {
            Directory.CreateDirectory(peftDir);
            foreach (string f in (string[])[adapter, config, weights])
            {
                File.Delete(f);
            }

            if (trial % 2 == 1)
            {
                File.WriteAllBytes(adapter, adapters["old"]);
                File.WriteAllBytes(weights, peft["old"].Item2);
                File.WriteAllBytes(config, peft["old"].Item1);
            }

            TimeSpan at = TimeSpan.FromMilliseconds(random.NextDouble() * full.TotalMilliseconds);
            int fileEvent = 1 + random.Next(3);
            bool killed = trial < 2
                ? CliProcess.KillAtFileEvent(export, outDir, fileEvent, path => Path.GetFileName(path).EndsWith(".tmp", StringComparison.Ordinal))
                : CliProcess.KillAfter(export, at);

            string foundAdapter = File.Exists(adapter) ? Matching(adapters, File.ReadAllBytes(adapter)) : "nothing";
            string foundPeft = "nothing";
            if (File.Exists(config))
            {
                // The config is written last: wherever it stands, the weights beside it are of the same export.
                byte[] c = File.ReadAllBytes(config), w = File.ReadAllBytes(weights);
                foundPeft = names.SingleOrDefault(n => peft[n].Item1.AsSpan().SequenceEqual(c) && peft[n].Item2.AsSpan().SequenceEqual(w))
                    ?? throw new AssertFailedException("adapter_config.json stands beside weights of another export, or one of them is partial");
            }

            TestContext.WriteLine($"trial {trial}: {(trial < 2 ? $"at temp file #{fileEvent}" : $"at {at.TotalMilliseconds:F0} ms")} {(killed ? "killed" : "finished first")}; .onnx_adapter: {foundAdapter}; PEFT: {foundPeft}");
        }

        Assert.AreEqual(0, CliProcess.Run(export));
        CollectionAssert.AreEqual(adapters["new"], File.ReadAllBytes(adapter));
        CollectionAssert.AreEqual(peft["new"].Item1, File.ReadAllBytes(config));
        CollectionAssert.AreEqual(peft["new"].Item2, File.ReadAllBytes(weights));
        Assert.IsFalse(Directory.EnumerateFiles(outDir, "*.tmp", SearchOption.AllDirectories).Any(), "the killed runs' temporaries are removed by the next export");
    }

    // Which complete version the files under the final names are; fails on anything else (partial, or a mixed pair).
    private static string Matching(Dictionary<string, (byte[] Model, byte[] Data)> versions, byte[] model, byte[] data) =>
        versions.SingleOrDefault(v => v.Value.Model.AsSpan().SequenceEqual(model) && v.Value.Data.AsSpan().SequenceEqual(data)).Key
        ?? throw new AssertFailedException($"merged.onnx ({model.Length:N0} bytes) and merged.onnx.data ({data.Length:N0} bytes) are not one complete output");

    private static string Matching(Dictionary<string, byte[]> versions, byte[] bytes) =>
        versions.SingleOrDefault(v => v.Value.AsSpan().SequenceEqual(bytes)).Key
        ?? throw new AssertFailedException($"the .onnx_adapter ({bytes.Length:N0} bytes) is not a complete output");

    private static string LoraModel(string path, LlamaConfig config, int rank)
    {
        using Model model = TorchLlamaBuilder.Build(config);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = rank, Alpha = 2 * rank });
        var rng = new Random(config.Seed);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            float[] b = LoraTestModels.Rand(m.Rank * (int)m.OutFeatures, rng, 0.02f);
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], b));
        }

        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        return path;
    }
}
