using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Targets;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Rewriter;

/// <summary>
/// LoRA on Conv (PEFT's Conv semantics) and on Gather embeddings (PEFT's lora_embedding_A/B): a fresh adapter changes
/// nothing, merged = unmerged through ORT, PEFT keys and shapes as PEFT writes them, and the .onnx_adapter runs in
/// ORT's own adapter loader. Models: <see cref="ConvLmBuilder"/> (Conv1d + embedding, initializers) and the
/// paddle-style graph (Conv2d 3×3 stride 2 with Constant-node weights).
/// </summary>
[TestClass]
public sealed class ConvEmbeddingLoraTests
{
    private const float MergedRel = 1e-5f;
    private static readonly string[] s_convLmTargets = ["model.embed_tokens", "model.conv1", "model.conv2"];
    private static readonly string[] s_paddleConvs = ["conv2d_0", "conv2d_1", "conv2d_2"];

    [TestMethod]
    public void Find_ConvLm_OffersConvAndEmbeddingButAllLinearSkipsThem()
    {
        using Model model = ConvLmBuilder.Build(new ConvLmConfig());
        IReadOnlyList<LinearTarget> targets = TargetDiscovery.FindAll(model);
        LinearTarget conv = targets.Single(t => t.Module == "model.conv1");
        Assert.AreEqual((LinearOpKind.Conv, 16L * 3, 16L), (conv.OpKind, conv.InFeatures, conv.OutFeatures));
        LinearTarget embed = targets.Single(t => t.Module == "model.embed_tokens");
        Assert.AreEqual((LinearOpKind.Embedding, 256L, 16L, false), (embed.OpKind, embed.InFeatures, embed.OutFeatures, embed.IsOutputHead));

        using Model paddle = PaddleStyleBuilder.Build(new PaddleStyleConfig());
        ModelSummary summary = ModelSummary.Create(paddle);
        CollectionAssert.AreEqual(s_paddleConvs, summary.ConvLayers.Select(t => t.Module).ToArray());
        Assert.AreEqual(19, summary.LinearLayers.Count);

        var options = new LoraOptions { Targets = [LoraOptions.AllLinear] };
        Assert.IsTrue(LoraInjector.Plan(paddle, options).All(s => s.Target.IsLinear), "all-linear never takes Conv or Embedding (as in PEFT)");
    }

    [TestMethod]
    public void Inject_ConvAndEmbeddingWithFreshAdapter_KeepsOutputsIdentical()
    {
        using var dir = new TempDir();
        foreach ((string name, Model model, string[] targets) in Models())
        {
            using (model)
            {
                string basePath = LoraTestSupport.Save(model, dir, name + "-base.onnx");
                using Model lora = OnnxReader.Load(basePath);
                LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8, Targets = targets });
                Assert.AreEqual(targets.Length, manifest.Modules.Count);
                Dictionary<string, float[]> expected = OrtRunner.Run(basePath);
                Assert.AreEqual(0f, LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, name + "-lora.onnx")), expected), name);

                // B = 0 with a random A (the Linear/Conv init; the embedding starts from A = 0) is the identity too.
                foreach (LoraModuleInfo m in manifest.Modules)
                {
                    lora.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, m.Rank], LoraTestSupport.Random((int)m.InFeatures * m.Rank, 3)));
                    lora.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], new float[m.Rank * m.OutFeatures]));
                }

                Assert.AreEqual(0f, LoraTestSupport.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, name + "-b0.onnx")), expected), name + " B = 0");
            }
        }
    }

    [TestMethod]
    public void Merge_TrainedConvAndEmbeddingAdapter_EqualsUnmergedAndMatchesIndependentDelta()
    {
        using var dir = new TempDir();
        foreach ((string name, Model model, string[] targets) in Models())
        {
            using (model)
            {
                string basePath = LoraTestSupport.Save(model, dir, name + "-base.onnx");
                (string loraPath, LoraManifest manifest, var adapters) = TrainedLora(dir, basePath, name, targets);
                string mergedPath = dir.File(name + "-merged.onnx");
                LoraMerger.Merge(loraPath, mergedPath);
                Dictionary<string, float[]> unmerged = OrtRunner.Run(loraPath);
                float error = LoraTestSupport.RelativeError(OrtRunner.Run(mergedPath), unmerged);
                Console.WriteLine($"{name}: merged vs unmerged max rel error {error:E2}");
                Assert.IsLessThanOrEqualTo(MergedRel, error, name);
                Assert.IsGreaterThan(100 * MergedRel, LoraTestSupport.RelativeError(OrtRunner.Run(basePath), unmerged), name + ": the adapter changes the output");

                // Independent delta: W' = W + s·Σ_r B[r, o]·A[(i, k…), r] on the stored [out, in, k…] (Conv) / [rows, dim]
                // (Embedding) weights, computed here and run through ORT.
                using Model reference = OnnxReader.Load(basePath);
                foreach (LoraModuleInfo m in manifest.Modules)
                {
                    Value w = reference.Graph.Initializers.TryGetValue(m.BaseWeight, out Value? init) ? init : ConstantWeights.Lift(reference.Graph, reference.Graph.Nodes.SelectMany(n => n.Outputs).Single(v => v.Name == m.BaseWeight));
                    float[] stored = w.Initializer!.ToFloat32();
                    int inF = (int)m.InFeatures, outF = (int)m.OutFeatures;
                    bool outIn = m.OpKind == "Conv";
                    float[] inOut = outIn ? LoraTestSupport.Transpose(stored, outF, inF) : stored;
                    float[] merged = LoraTestSupport.AddDelta(inOut, adapters[m.Module].A, adapters[m.Module].B, inF, outF, m.Rank, m.Scaling);
                    reference.Graph.Initializers.SetData(m.BaseWeight, new InMemoryTensor(m.BaseWeight, DataType.Float, w.Initializer!.Dims, TensorConvert.FromFloat32(outIn ? LoraTestSupport.Transpose(merged, inF, outF) : merged, DataType.Float)));
                }

                float refError = LoraTestSupport.RelativeError(OrtRunner.Run(LoraTestSupport.Save(reference, dir, name + "-ref.onnx")), unmerged);
                Assert.IsLessThanOrEqualTo(MergedRel, refError, name + ": independent W + s·B⊗A");
            }
        }
    }

    [TestMethod]
    public void ExportPeft_ConvAndEmbedding_WritesPeftKeysShapesAndMergesBack()
    {
        using var dir = new TempDir();
        using Model model = ConvLmBuilder.Build(new ConvLmConfig());
        string basePath = LoraTestSupport.Save(model, dir, "base.onnx");
        (string loraPath, _, _) = TrainedLora(dir, basePath, "convlm", s_convLmTargets);
        (int code, _, string stderr) = CliRunner.Run("export-adapter", loraPath, "--peft", dir.File("peft"));
        Assert.AreEqual(0, code, stderr);

        using (SafetensorsFile file = SafetensorsFile.Open(Path.Combine(dir.File("peft"), "adapter_model.safetensors")))
        {
            var shapes = file.Tensors.ToDictionary(t => t.Name, t => string.Join(",", t.Dims));
            Assert.AreEqual("4,256", shapes["base_model.model.model.embed_tokens.lora_embedding_A"]);
            Assert.AreEqual("16,4", shapes["base_model.model.model.embed_tokens.lora_embedding_B"]);
            Assert.AreEqual("4,16,3", shapes["base_model.model.model.conv1.lora_A.weight"]);
            Assert.AreEqual("16,4,1", shapes["base_model.model.model.conv1.lora_B.weight"]);
            Assert.AreEqual(6, shapes.Count);
        }

        // PEFT folder → plain base merge (the importer reads the Conv and Embedding forms back).
        (code, _, stderr) = CliRunner.Run("merge", basePath, "--adapter", dir.File("peft"), "-o", dir.File("merged.onnx"));
        Assert.AreEqual(0, code, stderr);
        Assert.IsLessThanOrEqualTo(MergedRel, LoraTestSupport.RelativeError(OrtRunner.Run(dir.File("merged.onnx")), OrtRunner.Run(loraPath)));
    }

    [TestMethod]
    public void ExportOnnxAdapter_ConvAndEmbeddingSlots_OrtAdapterLoaderAppliesIt()
    {
        using var dir = new TempDir();
        using Model model = PaddleStyleBuilder.Build(new PaddleStyleConfig());
        string basePath = LoraTestSupport.Save(model, dir, "base.onnx");
        (string loraPath, LoraManifest trained, _) = TrainedLora(dir, basePath, "paddle", s_paddleConvs);

        using Model slots = OnnxReader.Load(basePath);
        LoraManifest slotManifest = LoraInjector.Inject(slots, new LoraOptions { Targets = s_paddleConvs, Placement = LoraPlacement.AdapterSlots });
        string slotsPath = LoraTestSupport.Save(slots, dir, "slots.onnx");
        Assert.AreEqual(0f, LoraTestSupport.MaxAbsDiff(OrtRunner.Run(slotsPath), OrtRunner.Run(basePath)), "r = 0 slots change nothing");

        using Model loraModel = OnnxReader.Load(loraPath);
        AdapterFile adapter = LoraWeights.FromModel(loraModel, trained, loraPath).ToAdapterFile(slotManifest);
        string adapterPath = dir.File("task.onnx_adapter");
        OnnxAdapterFormat.Write(adapter, adapterPath);
        Dictionary<string, float[]> viaOrt;
        using (OrtLoraAdapter ortAdapter = OrtLoraAdapter.Create(adapterPath, null))
        using (var options = new RunOptions())
        {
            options.AddActiveLoraAdapter(ortAdapter);
            viaOrt = OrtRunner.Run(slotsPath, runOptions: options);
        }

        float error = LoraTestSupport.RelativeError(viaOrt, OrtRunner.Run(loraPath));
        Assert.IsGreaterThan(100 * MergedRel, LoraTestSupport.RelativeError(viaOrt, OrtRunner.Run(basePath)), "the adapter changes the output");
        Console.WriteLine($"paddle conv slots + .onnx_adapter vs LoRA model: max rel error {error:E2}");
        Assert.IsLessThanOrEqualTo(MergedRel, error);
    }

    [TestMethod]
    public void Inject_EmbeddingFeedingAdaptedHead_HeadBranchReadsTheAdaptedEmbedding()
    {
        // LFM2 fixture: Gather(embed) feeds lm_head directly. The head's branch must read the embedding AFTER its own
        // branch was added (a stale activation made the head's LoRA see the unadapted embedding: 7e-3 rel off).
        using var dir = new TempDir();
        string basePath = Fixtures.Path("ortgenai-tiny-random-lfm2", "decoder.onnx");
        using Model lora = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 2, Alpha = 4, Targets = ["embed", "lm_head"] });
        var adapters = LoraTestSupport.RandomizeAdapters(lora, manifest, seed: 21, scale: 0.05f);
        Dictionary<string, float[]> loraOut = OrtRunner.Run(LoraTestSupport.Save(lora, dir, "lora.onnx"));
        using Model reference = OnnxReader.Load(basePath);
        LoraTestSupport.MergeIntoBase(reference, manifest, adapters);
        float rel = LoraTestSupport.RelativeError(loraOut, OrtRunner.Run(LoraTestSupport.Save(reference, dir, "ref.onnx")));
        Assert.IsLessThanOrEqualTo(Tolerances.MergedRelFp32, rel);
    }

    private static IEnumerable<(string Name, Model Model, string[] Targets)> Models()
    {
        yield return ("convlm", ConvLmBuilder.Build(new ConvLmConfig()), s_convLmTargets);
        yield return ("paddle", PaddleStyleBuilder.Build(new PaddleStyleConfig()), s_paddleConvs);
    }

    private static (string Path, LoraManifest Manifest, Dictionary<string, (float[] A, float[] B)> Adapters) TrainedLora(TempDir dir, string basePath, string name, string[] targets)
    {
        using Model model = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = targets });
        var adapters = LoraTestSupport.RandomizeAdapters(model, manifest, seed: 11, scale: 0.3f);
        return (LoraTestSupport.Save(model, dir, name + "-trained.onnx"), manifest, adapters);
    }
}
