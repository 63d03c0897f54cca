using Onnx.Lora.Formats;
using Onnx.Lora.Tests.Cli;
using Onnx.Lora.Tests.Generation;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Gpu;

namespace Onnx.Lora.Tests.Gpu;

/// <summary>
/// The `gradients` verb that tools/gpu/run-h200.sh uses for CPU vs CUDA parity: its file must hold the loss and every
/// LoRA gradient of the seeded batch, equal to what a training session computes for that batch on its own.
/// </summary>
[TestClass]
public sealed class GradientsCommandTests
{
    private static readonly Lazy<(TempDir Dir, string Lora)> s_lora = new(() =>
    {
        var dir = new TempDir();
        (int code, _, string error) = CliRunner.Run("inject", StoriesModels.Plain, "-o", dir.File("lora.onnx"), "--targets", "q_proj,v_proj,down_proj", "-r", "4", "--alpha", "8");
        Assert.AreEqual(0, code, error);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => dir.Dispose();
        return (dir, dir.File("lora.onnx"));
    });

    [TestMethod]
    public void Gradients_Cpu_FileHoldsTheSessionsLossAndGradientsForTheSeededBatch()
    {
        using var dir = new TempDir();

        (int code, string stdout, string error) = CliRunner.Run("gradients", s_lora.Value.Lora, "--vocab-size", "512", "--seq-length", "24", "--seed", "5",
            "--artifacts", dir.File("art"), "-o", dir.File("g.safetensors"));

        Assert.AreEqual(0, code, error);
        StringAssert.StartsWith(stdout, "{\"provider\":\"cpu\"");
        var options = new FixedBatchRunOptions { VocabSize = 512, SequenceLength = 24, Seed = 5 };
        using LoraTrainingSession session = LoraTrainingSession.Create(TrainingArtifacts.Load(dir.File("art")));
        FixedBatchResult expected = FixedBatchRun.Run(session, options);
        using SafetensorsFile file = SafetensorsFile.Open(dir.File("g.safetensors"));
        Assert.HasCount(session.Parameters.Count + 1, file.Tensors);
        Assert.AreEqual(expected.Loss, file.ToFloat32("loss")[0]);
        foreach (var g in expected.Gradients)
        {
            CollectionAssert.AreEqual(g.Data, file.ToFloat32(g.Name), g.Name);
        }

        Assert.IsTrue(expected.Gradients.Where(g => g.Name.Contains("lora_A", StringComparison.Ordinal)).All(g => g.Data.Any(v => v != 0)),
            "with B ≠ 0 every A gradient is non-zero, so a parity check on A is not vacuous");
    }

    [TestMethod]
    public void Gradients_BZero_EveryAGradientIsZero()
    {
        using var dir = new TempDir();

        (int code, _, string error) = CliRunner.Run("gradients", s_lora.Value.Lora, "--vocab-size", "512", "--seq-length", "16", "--lora-b-std", "0", "-o", dir.File("g.safetensors"));

        Assert.AreEqual(0, code, error);
        using SafetensorsFile file = SafetensorsFile.Open(dir.File("g.safetensors"));
        string[] a = file.Tensors.Select(t => t.Name).Where(n => n.Contains("lora_A", StringComparison.Ordinal)).ToArray();
        Assert.IsNotEmpty(a);
        Assert.IsTrue(a.All(n => file.ToFloat32(n).All(v => v == 0)));
        Assert.IsTrue(file.Tensors.Where(t => t.Name.Contains("lora_B", StringComparison.Ordinal)).Any(t => file.ToFloat32(t.Name).Any(v => v != 0)));
    }

    [TestMethod]
    [DataRow("--vocab-size", "0")]
    [DataRow("--steps", "-1")]
    public void Gradients_BadOption_OneLineAndExit2(string option, string value)
    {
        using var dir = new TempDir();
        string[] args = option == "--vocab-size"
            ? ["gradients", s_lora.Value.Lora, "-o", dir.File("g.safetensors"), option, value]
            : ["gradients", s_lora.Value.Lora, "--vocab-size", "512", "-o", dir.File("g.safetensors"), option, value];

        (int code, string stdout, string error) = CliRunner.Run(args);

        Assert.AreEqual(2, code, error);
        Assert.AreEqual("", stdout);
        Assert.HasCount(1, error.Split('\n', StringSplitOptions.RemoveEmptyEntries), error);
        Assert.IsFalse(File.Exists(dir.File("g.safetensors")));
    }
}
