using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using static TorchSharp.torch;

namespace Onnx.Lora.TorchRef.Tests;

/// <summary>
/// Issue 7's parity: our trainer (backward graph of our own, run by ORT) against libtorch autograd and
/// torch.optim.AdamW on the real stories260K with all-linear LoRA (35 modules, seeded non-zero A and B), fp32.
/// </summary>
[TestClass]
[TestCategory("Parity")]
public sealed class TrainerParityTests
{
    // The bar for fp32: relative error 1e-4. Measured: loss 0 to 1e-7, gradients ≤ 3e-6, trajectory ≤ 5e-6.
    private const double Tolerance = 1e-4;

    [ClassInitialize]
    public static void Init(TestContext _) => set_num_threads(1);

    private static ParityResult Run(int steps, AdamWSettings adamw)
    {
        using var temp = new TempFolder();
        string path = System.IO.Path.Combine(temp.Path, "lora.onnx");
        using Model model = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx"));
        PeerLora.Inject(model, rank: 4, alpha: 8, seed: 7);
        OnnxWriter.Save(model, path);
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch[] batches = Enumerable.Range(0, 3).Select(i => TokenBatch.Create(100 + i, 3, 32, facts.Vocab)).ToArray();
        using var torchPeer = new TorchTrainer(new TorchLlama(facts, useSdpa: false), adamw, ownsModel: true);
        using ITrainingPeer ours = OursPeer.Create(path, adamw, threads: 1);
        return ParityResult.Run(torchPeer, ours, batches, steps);
    }

    [TestMethod]
    public void LossAndGradients_OfOurTrainer_MatchLibtorchAutograd()
    {
        ParityResult r = Run(steps: 0, new AdamWSettings());

        Assert.HasCount(70, r.Gradients);
        Assert.IsLessThanOrEqualTo(Tolerance, r.LossRel);
        foreach (TensorDiff g in r.Gradients)
        {
            Assert.IsGreaterThan(0, g.MaxAbsRef, $"{g.Name}: a zero reference gradient would make the check vacuous");
            Assert.IsLessThanOrEqualTo(Tolerance, g.RelInf, $"{g.Name}: max|d| {g.MaxAbsDiff:E2} vs max|g| {g.MaxAbsRef:E2}");
        }
    }

    [TestMethod]
    public void TwentyAdamWSteps_OfOurTrainer_FollowLibtorchLossTrajectory()
    {
        ParityResult r = Run(steps: 20, new AdamWSettings(Lr: 2e-3, WeightDecay: 0.01));

        Assert.IsLessThan(r.ReferenceTrajectory[0] - 0.5, r.ReferenceTrajectory[^1], "training must move the loss, else agreement is vacuous");
        for (int i = 0; i < r.ReferenceTrajectory.Length; i++)
        {
            double rel = Math.Abs(r.CandidateTrajectory[i] - r.ReferenceTrajectory[i]) / Math.Abs(r.ReferenceTrajectory[i]);
            Assert.IsLessThanOrEqualTo(Tolerance, rel, $"step {i + 1}: ours {r.CandidateTrajectory[i]} vs libtorch {r.ReferenceTrajectory[i]}");
        }
    }
}
