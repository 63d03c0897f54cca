using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Tests.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Distributed;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Distributed;

/// <summary>
/// A rank other than 0 opens what rank 0 prepared (<see cref="DistributedModel"/>) from what rank 0 sends: it has read
/// the source model once already and parses no model again (counted by <see cref="OnnxReadCounter"/>).
/// </summary>
[TestClass]
public sealed class DistributedModelTests
{
    [TestMethod]
    public void Load_FromRankZerosDescription_ParsesNoModelAndHasRankZerosManifest()
    {
        using var dir = new TempDir();
        string lora = dir.File("model.lora.onnx");
        LoraManifest manifest;
        using (Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx")))
        {
            manifest = LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 1, nonZeroB: false);
            OnnxWriter.Save(model, lora);
        }

        TrainingArtifacts artifacts = TrainingArtifacts.Build(lora, dir.File("artifacts"));
        var rankZero = new PreparedModel("model.onnx", lora, manifest, artifacts, 512, 256);
        var options = new TrainOptions { Model = "model.onnx", Data = "d.jsonl", Tokenizer = "t" };
        var limits = new ModelLimits("model.onnx", 512, 256, new ModelShape(0, 64, 172, 5, 8, 512, 0));

        PreparedModel other;
        IReadOnlyList<string> reads;
        using (OnnxReadCounter counter = OnnxReadCounter.Start())
        {
            other = DistributedModel.Load(options, DistributedModel.Describe(rankZero), dir.File("artifacts"), limits);
            reads = counter.Paths;
        }

        Assert.IsEmpty(reads, string.Join(", ", reads));
        Assert.AreEqual(lora, other.LoraModelPath);
        Assert.AreEqual(manifest.ToJson(), other.Manifest.ToJson());
        CollectionAssert.AreEqual(artifacts.Trainable.Select(t => t.Name).ToArray(), other.Artifacts.Trainable.Select(t => t.Name).ToArray());
    }

    [TestMethod]
    public void Load_WhenTheLoraModelIsNotShared_SaysPutOutputDirOnASharedFileSystem()
    {
        using var dir = new TempDir();
        var manifest = new LoraManifest { Placement = LoraPlacement.Initializers, Modules = [] };
        var options = new TrainOptions { Model = "model.onnx", Data = "d.jsonl", Tokenizer = "t" };
        var limits = new ModelLimits("model.onnx", 512, 256, new ModelShape(0, 64, 172, 5, 8, 512, 0));

        var e = Assert.ThrowsExactly<LoraException>(() => DistributedModel.Load(options, dir.File("missing.onnx") + "\n" + manifest.ToJson(), dir.File("artifacts"), limits));
        StringAssert.Contains(e.Message, "shared by all machines");
    }
}
