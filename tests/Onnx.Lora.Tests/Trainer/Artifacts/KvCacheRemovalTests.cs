using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Generation;
using Onnx.Lora.Tests.Models;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Tests.Trainer.Artifacts;

[TestClass]
public sealed class KvCacheRemovalTests
{
    [TestMethod]
    public void Apply_TorchStyleConcatCache_BypassesConcatAndDropsPastInputsWithSameLogits()
    {
        using var dir = new TempDir();
        using Model model = OnnxReader.Load(StoriesModels.KvCache);
        int concatsBefore = model.Graph.Nodes.Count(n => n.Is("Concat"));

        IReadOnlyList<string> kept = KvCacheRemoval.Apply(model);

        Assert.IsEmpty(kept, "no past input is left to feed");
        Assert.IsFalse(model.Graph.Inputs.Any(i => KvCacheRemoval.IsPastInput(i.Name)));
        Assert.IsFalse(model.Graph.Outputs.Any(o => KvCacheRemoval.IsPresentOutput(o.Name)));
        Assert.AreEqual(concatsBefore - 10, model.Graph.Nodes.Count(n => n.Is("Concat")), "one key and one value Concat per layer (5 layers) gone");
        using var removed = ModelRunner.FromModel(model, dir);
        using var plain = new ModelRunner(StoriesModels.Plain);
        long[] ids = [1, 403, 407, 261, 378, 17, 300, 98];
        // Same ops on the same shapes as the model converted without a cache: observed bit-identical.
        Assert.IsLessThanOrEqualTo(1e-6f, OrtRunner.MaxAbsDiff(plain.Logits(ids), removed.Logits(ids)));
    }
}
