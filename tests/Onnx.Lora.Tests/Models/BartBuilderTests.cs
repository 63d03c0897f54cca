using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Rewriter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

/// <summary>
/// The BART-style encoder-decoder builder: both Optimum-shaped graphs against a plain double-precision reference
/// (<see cref="ReferenceForward.BartEncoder"/>, written from the model's definition), and LoRA on both parts with PEFT's
/// module names: a B = 0 adapter is the identity, a random adapter merged equals it unmerged through ORT.
/// </summary>
[TestClass]
public sealed class BartBuilderTests
{
    // float32 graph vs the double reference on activations of magnitude ~1 (as EncoderBuilderTests).
    private const double ReferenceTolerance = 2e-5;

    private const float MergedRel = 1e-5f;

    private static readonly BartConfig s_config = new() { Layers = 2, Hidden = 32, Heads = 4, Intermediate = 64, Vocab = 256, MaxPositions = 16 };

    [TestMethod]
    public void Build_EncoderAndDecoderWithPadding_MatchReferenceForward()
    {
        using EncoderDecoderModels models = BartBuilder.Build(s_config);
        using var dir = new TempDir();
        string encoderPath = LoraTestSupport.Save(models.Encoder, dir, EncoderDecoderModels.EncoderFile);
        string decoderPath = LoraTestSupport.Save(models.Decoder, dir, EncoderDecoderModels.DecoderFile);
        long[] sourceIds = [5, 17, 200, 42, 9, 1];
        long[] sourceMask = [1, 1, 1, 1, 1, 0];
        long[] targetIds = [2, 33, 7, 250];

        float[] states = Run(encoderPath, ("input_ids", sourceIds, [1, 6]), ("attention_mask", sourceMask, [1, 6]));
        double[] expectedStates = ReferenceForward.BartEncoder(s_config, new RandomWeightSource(s_config.Seed), sourceIds, sourceMask);
        double stateDiff = expectedStates.Zip(states, (e, a) => Math.Abs(e - a)).Max();
        Assert.IsLessThanOrEqualTo(ReferenceTolerance, stateDiff, "encoder last_hidden_state");

        float[] logits = RunDecoder(decoderPath, targetIds, sourceMask, states);
        double[] expected = ReferenceForward.BartDecoderLogits(s_config, new RandomWeightSource(s_config.Seed), targetIds, expectedStates, sourceMask);
        double diff = expected.Zip(logits, (e, a) => Math.Abs(e - a)).Max();
        Assert.IsLessThanOrEqualTo(ReferenceTolerance, diff, "decoder logits");
        Assert.IsGreaterThan(0.5, expected.Max() - expected.Min(), "logits must not be flat");

        // The padded source position must not matter (the encoder mask reaches the cross-attention).
        float[] otherPad = Run(encoderPath, ("input_ids", [5, 17, 200, 42, 9, 99], [1, 6]), ("attention_mask", sourceMask, [1, 6]));
        Assert.IsGreaterThan(1e-3, otherPad.Zip(states, (a, b) => Math.Abs(a - b)).Max(), "the padded position's own state changes");
        float[] logitsOtherPad = RunDecoder(decoderPath, targetIds, sourceMask, otherPad);
        Assert.IsLessThanOrEqualTo(1e-5, logits.Zip(logitsOtherPad, (a, b) => Math.Abs(a - b)).Max());
    }

    [TestMethod]
    public void Inject_BothPartsAllLinear_PeftNamesBZeroIdentityAndMergedEqualsUnmerged()
    {
        using EncoderDecoderModels models = BartBuilder.Build(s_config);
        using var dir = new TempDir();
        foreach ((string name, Model model, int modules) in new[] { ("encoder", models.Encoder, 2 * 6), ("decoder", models.Decoder, 2 * 10) })
        {
            string basePath = LoraTestSupport.Save(model, dir, name + "-base.onnx");
            using Model lora = OnnxReader.Load(basePath);
            LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8, Targets = [LoraOptions.AllLinear], Seed = 5 });
            Assert.AreEqual(modules, manifest.Modules.Count, name);
            string[] expectedNames = name == "encoder"
                ? ["layers.0.self_attn.q_proj", "layers.1.fc2"] // Optimum's encoder file names its layers below model.encoder.
                : ["model.decoder.layers.0.self_attn.k_proj", "model.decoder.layers.1.encoder_attn.v_proj", "model.decoder.layers.1.encoder_attn.out_proj"];
            foreach (string module in expectedNames)
            {
                Assert.IsTrue(manifest.Modules.Any(m => m.Module == module), $"{name}: {module} in [{string.Join(", ", manifest.Modules.Select(m => m.Module))}]");
            }

            Assert.IsFalse(manifest.Modules.Any(m => m.Module.Contains("lm_head", StringComparison.Ordinal)), "all-linear leaves the output head out");
            Dictionary<string, float[]> expected = OrtRunner.Run(basePath, dimFor: Dims);
            Assert.AreEqual(0f, ErrorMetrics.MaxAbsDiff(OrtRunner.Run(LoraTestSupport.Save(lora, dir, name + "-b0.onnx"), dimFor: Dims), expected), name + ": B = 0");

            int seed = 11;
            foreach (LoraModuleInfo m in manifest.Modules)
            {
                lora.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], TestArrays.Uniform(m.Rank * (int)m.OutFeatures, seed++, 0.2f)));
            }

            string loraPath = LoraTestSupport.Save(lora, dir, name + "-lora.onnx");
            string mergedPath = dir.File(name + "-merged.onnx");
            LoraMerger.Merge(loraPath, mergedPath);
            Dictionary<string, float[]> unmerged = OrtRunner.Run(loraPath, dimFor: Dims);
            Assert.IsLessThanOrEqualTo(MergedRel, ErrorMetrics.RelativeError(OrtRunner.Run(mergedPath, dimFor: Dims), unmerged), name + ": merged vs unmerged");
            Assert.IsGreaterThan(100 * MergedRel, ErrorMetrics.RelativeError(expected, unmerged), name + ": the adapter changes the output");
        }
    }

    private static long Dims(string symbol) => symbol switch
    {
        "encoder_sequence_length" => 6,
        "decoder_sequence_length" => 4,
        _ => -1,
    };

    private static float[] RunDecoder(string path, long[] ids, long[] encoderMask, float[] encoderStates)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(path, options);
        using OrtValue idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using OrtValue maskValue = OrtValue.CreateTensorValueFromMemory(encoderMask, [1, encoderMask.Length]);
        using OrtValue statesValue = OrtValue.CreateTensorValueFromMemory(encoderStates, [1, encoderMask.Length, s_config.Hidden]);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(runOptions, ["input_ids", "encoder_attention_mask", "encoder_hidden_states"], [idsValue, maskValue, statesValue], ["logits"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    private static float[] Run(string path, params (string Name, long[] Data, long[] Shape)[] inputs)
    {
        using var options = new SessionOptions { IntraOpNumThreads = 1 };
        using var session = new InferenceSession(path, options);
        OrtValue[] values = [.. inputs.Select(i => OrtValue.CreateTensorValueFromMemory(i.Data, i.Shape))];
        try
        {
            using var runOptions = new RunOptions();
            using IDisposableReadOnlyCollection<OrtValue> outputs = session.Run(runOptions, [.. inputs.Select(i => i.Name)], values, [session.OutputNames[0]]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            foreach (OrtValue v in values)
            {
                v.Dispose();
            }
        }
    }
}
