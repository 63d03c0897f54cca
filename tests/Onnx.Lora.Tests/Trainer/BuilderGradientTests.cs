using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// Whole-model gradient checks on the GPT-2 (MatMul+Add and Gemm linears, causal LM loss) and BERT (sequence
/// classification loss) builders with LoRA on all linear layers and random B: the training model's gradient w.r.t.
/// the largest-gradient entry of every third LoRA tensor against central differences of the evaluation model's loss
/// (float32, h = 3e-3, relative error ≤ 1e-2 against a floor of 5e-2, as the fixture checks).
/// </summary>
[TestClass]
public sealed class BuilderGradientTests
{
    private static double Check(Model model, ILossHead loss, int vocab, string tag)
    {
        using var temp = new TempDir();
        string path = temp.File("lora.onnx");
        LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, Targets = [LoraOptions.AllLinear], Seed = 3 });
        OnnxWriter.Save(model, path);
        TrainingArtifacts artifacts = TrainingArtifacts.Build(path, temp.File("artifacts"), new TrainingArtifactsOptions { Loss = loss });
        using LoraTrainingSession session = LoraTrainingSession.Create(artifacts, new TrainingSessionOptions { IntraOpThreads = 1 });
        TrainingBatch batch = FixtureModels.FixtureTrainingTests.Batch(vocab, 9, leftPadding: false);
        if (loss is SequenceClassificationLoss)
        {
            batch = batch with { Labels = [2, 0] };
        }

        return FixtureModels.FixtureGradientTests.MaxRelativeError(session, batch, 3e-3, tag);
    }

    [TestMethod]
    [DataRow(LinearStyle.MatMulAdd)]
    [DataRow(LinearStyle.Gemm)]
    public void ComputeGradients_Gpt2BuilderWithLora_MatchesFiniteDifferences(LinearStyle style)
    {
        using Model model = Gpt2Builder.Build(new Gpt2Config { Hidden = 32, Heads = 4, Intermediate = 64, Linear = style });
        double worst = Check(model, new CausalLmLoss(), 256, $"gpt2-{style}");
        Assert.IsLessThan(1e-2, worst);
    }

    [TestMethod]
    public void ComputeGradients_BertBuilderWithLora_MatchesFiniteDifferences()
    {
        using Model model = BertBuilder.Build(new BertConfig { Hidden = 32, Heads = 4, Intermediate = 64 });
        double worst = Check(model, new SequenceClassificationLoss(), 256, "bert");
        Assert.IsLessThan(1e-2, worst);
    }
}
