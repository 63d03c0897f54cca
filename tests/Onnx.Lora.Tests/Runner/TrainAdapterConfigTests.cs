using System.Text.Json;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Runner;

/// <summary>The PEFT adapter train writes records the configuration the model was injected with, one truthful way.</summary>
[TestClass]
public sealed class TrainAdapterConfigTests
{
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void Train_ModelInjectedWithRsLora_AdapterSaysUseRsLoraWithTheUsersAlphaAndBaseModel()
    {
        using var dir = new TempDir();
        using (Model model = Llama2cConverter.Convert(s_checkpoint, kvCache: false))
        {
            LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8, UseRsLora = true, Targets = ["q_proj", "v_proj"], Layers = new HashSet<int> { 0, 1 }, BaseModelNameOrPath = "karpathy/stories260K" });
            OnnxWriter.Save(model, dir.File("lora.onnx"));
        }

        File.WriteAllLines(dir.File("train.jsonl"), Enumerable.Range(0, 8).Select(i => JsonSerializer.Serialize(new { text = $"The cat sat on mat number {i}." })));
        var options = new TrainOptions
        {
            Model = dir.File("lora.onnx"),
            Tokenizer = Path.Combine(Path.GetDirectoryName(s_checkpoint)!, "tok512.model"),
            Data = dir.File("train.jsonl"),
            OutputDir = dir.File("run"),
            SeqLength = 32,
            BatchSize = 4,
            MaxSteps = 2,
            SaveSteps = 0,
            IntraOpThreads = 1,
        };
        new TrainingRunner(options).Run(TestContext.CancellationToken);

        PeftConfig config = PeftAdapter.ReadConfig(Path.Combine(dir.File("run"), "adapter"));
        Assert.IsTrue(config.Lora.UseRsLora, "train's own use_rslora option (false) does not override the model's");
        Assert.AreEqual(8.0, config.Lora.Alpha, "alpha as given, not pre-multiplied");
        Assert.AreEqual(4, config.R);
        CollectionAssert.AreEqual(new[] { 0, 1 }, config.Lora.Layers!.Order().ToArray());
        Assert.AreEqual("karpathy/stories260K", config.BaseModelNameOrPath);
    }
}
