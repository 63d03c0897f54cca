using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Targets;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Runner;

/// <summary>
/// Joining an Optimum encoder-decoder export: the encoder file names its layers below the encoder module, the joined
/// graph names them as PEFT does (BART's <c>model.encoder.…</c>, T5's <c>encoder.…</c>), and merging one adapter into
/// a part takes that part's modules, named as the part names them.
/// </summary>
[TestClass]
public sealed class EncoderDecoderChainTests
{
    private static readonly BartConfig s_config = new() { Vocab = 64, Hidden = 16, Heads = 2, Intermediate = 32, Layers = 1, MaxPositions = 16, Seed = 3 };

    [TestMethod]
    public void Join_OptimumBartParts_ModulesNamedAsPeftNamesThem()
    {
        using EncoderDecoderModels parts = BartBuilder.Build(s_config);
        Assert.IsTrue(TargetDiscovery.Find(parts.Encoder).Any(t => t.Module == "layers.0.self_attn.q_proj"), "the encoder file alone lacks the scope");
        EncoderDecoderChain.Join(parts.Decoder, parts.Encoder, "decoder_model.onnx", "encoder_model.onnx");
        var modules = TargetDiscovery.Find(parts.Decoder).Select(t => t.Module).ToHashSet();
        foreach (string m in new[] { "model.encoder.layers.0.self_attn.q_proj", "model.encoder.layers.0.fc2", "model.decoder.layers.0.encoder_attn.k_proj", "model.decoder.layers.0.self_attn.out_proj" })
        {
            Assert.IsTrue(modules.Contains(m), $"{m} in [{string.Join(", ", modules)}]");
        }

        CollectionAssert.AreEquivalent(new[] { "input_ids", "attention_mask", "decoder_input_ids" }, parts.Decoder.Graph.Inputs.Select(v => v.Name).ToArray());
    }

    [TestMethod]
    public void Join_DecoderScopedWithoutModel_EncoderScopedAsT5NamesIt()
    {
        using EncoderDecoderModels parts = BartBuilder.Build(s_config);
        foreach (Node node in parts.Decoder.Graph.Nodes.Where(n => n.Name.StartsWith("/model/decoder/", StringComparison.Ordinal)))
        {
            node.Name = node.Name["/model".Length..]; // T5's decoder paths: "/decoder/block.0/…"
        }

        EncoderDecoderChain.Join(parts.Decoder, parts.Encoder, "decoder_model.onnx", "encoder_model.onnx");
        var modules = TargetDiscovery.Find(parts.Decoder).Select(t => t.Module).ToHashSet();
        Assert.IsTrue(modules.Contains("encoder.layers.0.self_attn.q_proj"), string.Join(", ", modules));
        Assert.IsTrue(modules.Contains("decoder.layers.0.self_attn.q_proj"), string.Join(", ", modules));
    }

    [TestMethod]
    [DataRow("model.encoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.q_proj")]
    [DataRow("encoder.layers.0.self_attn.q_proj", "decoder.layers.0.self_attn.q_proj")]
    public void Select_AdapterOfBothStacks_EachPartTakesItsOwnModulesUnderItsNames(string encoderModule, string decoderModule)
    {
        using EncoderDecoderModels parts = BartBuilder.Build(s_config);
        var weights = new LoraWeights([Module(encoderModule), Module(decoderModule), Module("lm_head")]);

        IReadOnlyList<string> encoderModules = TargetDiscovery.FindAll(parts.Encoder).Select(t => t.Module).ToList();
        LoraWeights encoder = EncoderDecoderPart.Select(parts.Encoder, weights, encoderModules, out int leftForDecoder);
        CollectionAssert.AreEqual(new[] { "layers.0.self_attn.q_proj" }, encoder.Modules.Select(m => m.Module).ToArray());
        Assert.AreEqual(2, leftForDecoder);

        IReadOnlyList<string> decoderModules = TargetDiscovery.FindAll(parts.Decoder).Select(t => t.Module).ToList();
        LoraWeights decoder = EncoderDecoderPart.Select(parts.Decoder, weights, decoderModules, out int leftForEncoder);
        CollectionAssert.AreEqual(new[] { decoderModule, "lm_head" }, decoder.Modules.Select(m => m.Module).ToArray());
        Assert.AreEqual(1, leftForEncoder);
    }

    [TestMethod]
    public void Select_AdapterOfOneStack_Unchanged()
    {
        using EncoderDecoderModels parts = BartBuilder.Build(s_config);
        var weights = new LoraWeights([Module("layers.0.self_attn.q_proj")]);
        LoraWeights selected = EncoderDecoderPart.Select(parts.Encoder, weights, ["layers.0.self_attn.q_proj"], out int other);
        Assert.AreSame(weights, selected);
        Assert.AreEqual(0, other);
    }

    [TestMethod]
    public void Select_EncoderOnlyAdapterWithHeadOnFeatureExtractor_Unchanged()
    {
        // A BERT adapter (encoder layers + a pooler) on a model whose output is last_hidden_state: not an encoder-decoder part.
        using EncoderDecoderModels parts = BartBuilder.Build(s_config);
        var weights = new LoraWeights([Module("bert.encoder.layer.0.attention.self.query"), Module("bert.pooler.dense")]);
        LoraWeights selected = EncoderDecoderPart.Select(parts.Encoder, weights, ["bert.encoder.layer.0.attention.self.query"], out int other);
        Assert.AreSame(weights, selected);
        Assert.AreEqual(0, other);
    }

    private static LoraModuleWeights Module(string name) => new(name, 16, 16, 1, new float[16], new float[16], 1f);
}
