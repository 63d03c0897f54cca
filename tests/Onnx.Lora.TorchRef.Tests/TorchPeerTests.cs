using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using static TorchSharp.torch;

namespace Onnx.Lora.TorchRef.Tests;

/// <summary>
/// The libtorch peer itself is checked against things independent of it before it is used as a reference:
/// ORT's logits of the very same ONNX file, a cross-entropy computed here in double from ORT's logits, central
/// differences of that ORT loss, and AdamW written out by hand.
/// </summary>
[TestClass]
[TestCategory("Parity")]
public sealed class TorchPeerTests
{
    private const int Rank = 4;
    private const double Alpha = 8;
    private const int LoraSeed = 7;
    private const int BatchSeed = 20261125;

    // fp32 through 5 layers: ORT and libtorch sum in different orders; measured 1.4e-5 on logits of magnitude ~17.
    private const double LogitTolerance = 1e-4;

    [ClassInitialize]
    public static void Init(TestContext _) => set_num_threads(1);

    private static string BasePath => Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx");

    private static Model LoadLora()
    {
        Model model = OnnxReader.Load(BasePath);
        PeerLora.Inject(model, Rank, Alpha, LoraSeed);
        return model;
    }

    private static float[] TorchLogits(LlamaGraphFacts facts, TokenBatch batch, bool sdpa = false)
    {
        using var llama = new TorchLlama(facts, sdpa);
        using var scope = NewDisposeScope();
        long[] shape = [batch.BatchSize, batch.SeqLen];
        return llama.Forward(tensor(batch.Ids, shape, ScalarType.Int64), tensor(batch.Mask, shape, ScalarType.Int64)).data<float>().ToArray();
    }

    private static double MaxAbsDiff(float[] a, float[] b)
    {
        Assert.HasCount(a.Length, b);
        double max = 0;
        for (int i = 0; i < a.Length; i++)
        {
            max = Math.Max(max, Math.Abs(a[i] - b[i]));
        }

        return max;
    }

    /// <summary>Shifted causal-LM cross-entropy with ignore_index -100, mean over counted targets, in double.</summary>
    private static double CrossEntropy(float[] logits, TokenBatch batch, int vocab)
    {
        double sum = 0;
        int count = 0;
        for (int b = 0; b < batch.BatchSize; b++)
        {
            for (int t = 0; t + 1 < batch.SeqLen; t++)
            {
                long label = batch.Labels[(b * batch.SeqLen) + t + 1];
                if (label == -100)
                {
                    continue;
                }

                int row = ((b * batch.SeqLen) + t) * vocab;
                double max = double.NegativeInfinity;
                for (int v = 0; v < vocab; v++)
                {
                    max = Math.Max(max, logits[row + v]);
                }

                double z = 0;
                for (int v = 0; v < vocab; v++)
                {
                    z += Math.Exp(logits[row + v] - max);
                }

                sum += max + Math.Log(z) - logits[row + (int)label];
                count++;
            }
        }

        return sum / count;
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void Forward_BaseModel_MatchesOrtLogits(bool sdpa)
    {
        using Model model = OnnxReader.Load(BasePath);
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(BatchSeed, 3, 40, facts.Vocab);

        double diff = MaxAbsDiff(OrtLogits.Run(BasePath, batch, 1), TorchLogits(facts, batch, sdpa));

        Assert.IsLessThanOrEqualTo(LogitTolerance, diff);
    }

    [TestMethod]
    public void Forward_LoraModel_MatchesOrtLogitsAndDiffersFromBase()
    {
        using Model model = LoadLora();
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(BatchSeed, 3, 40, facts.Vocab);
        float[] ort = OrtLogits.Run(model, batch, 1);

        double diff = MaxAbsDiff(ort, TorchLogits(facts, batch));
        double fromBase = MaxAbsDiff(ort, OrtLogits.Run(BasePath, batch, 1));

        Assert.HasCount(35, facts.Manifest!.Modules);
        Assert.IsLessThanOrEqualTo(LogitTolerance, diff);
        Assert.IsGreaterThan(0.1, fromBase, "the seeded LoRA branch must change the logits, else the parity check is vacuous");
    }

    [TestMethod]
    public void Loss_OfTorchPeer_EqualsShiftedCrossEntropyOfOrtLogits()
    {
        using Model model = LoadLora();
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(BatchSeed, 3, 40, facts.Vocab);
        double expected = CrossEntropy(OrtLogits.Run(model, batch, 1), batch, facts.Vocab);
        using var llama = new TorchLlama(facts, useSdpa: false);
        using var trainer = new TorchTrainer(llama, new AdamWSettings());

        (float loss, _) = trainer.LossAndGradients(batch);

        Assert.IsLessThan(40 * 3 - 3, batch.CountedTargets(), "padding must leave some targets uncounted");
        Assert.AreEqual(expected, loss, 1e-5 * expected);
    }

    [TestMethod]
    public void Gradients_OfTorchPeer_MatchCentralDifferencesOfOrtLoss()
    {
        using Model model = LoadLora();
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(BatchSeed, 2, 24, facts.Vocab);
        Dictionary<string, float[]> grads;
        using (var llama = new TorchLlama(facts, useSdpa: false))
        using (var trainer = new TorchTrainer(llama, new AdamWSettings()))
        {
            grads = trainer.LossAndGradients(batch).Gradients;
        }

        LoraManifest manifest = facts.Manifest!;
        string[] tensors = [manifest.Modules[0].LoraA, manifest.Modules[0].LoraB, manifest.Modules[^1].LoraA, manifest.Modules[^1].LoraB];
        const float h = 1e-2f;
        foreach (string name in tensors)
        {
            // The largest entry of each tensor: its central difference stands well above fp32 noise of the loss.
            float[] g = grads[name];
            int i = Enumerable.Range(0, g.Length).MaxBy(j => Math.Abs(g[j]));
            float[] original = facts.LoraInitial[name];
            double Loss(float delta)
            {
                float[] changed = (float[])original.Clone();
                changed[i] += delta;
                Onnx.Lora.Ir.Tensor init = model.Graph.Initializers[name].Initializer!;
                model.Graph.Initializers.SetData(name, InMemoryTensor.FromFloats(name, init.Dims, changed));
                try
                {
                    return CrossEntropy(OrtLogits.Run(model, batch, 1), batch, facts.Vocab);
                }
                finally
                {
                    model.Graph.Initializers.SetData(name, InMemoryTensor.FromFloats(name, init.Dims, original));
                }
            }

            double numeric = (Loss(h) - Loss(-h)) / (2 * h);

            // Central differences: O(h²) truncation plus fp32 loss noise / h; 2% covers both at h = 1e-2.
            Assert.AreEqual(numeric, g[i], (0.02 * Math.Abs(numeric)) + 1e-4, $"d loss / d {name}[{i}]");
        }
    }

    [TestMethod]
    public void AdamW_TwoSteps_MatchHandWrittenDecoupledUpdate()
    {
        using Model model = LoadLora();
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(BatchSeed, 2, 24, facts.Vocab);
        var s = new AdamWSettings(Lr: 1e-2, Beta1: 0.9, Beta2: 0.95, Eps: 1e-6, WeightDecay: 0.1);
        using var llama = new TorchLlama(facts, useSdpa: false);
        using var trainer = new TorchTrainer(llama, s);

        Dictionary<string, float[]> p0 = trainer.Parameters();
        Dictionary<string, float[]> g1 = trainer.LossAndGradients(batch).Gradients;
        trainer.Step(batch);
        Dictionary<string, float[]> p1 = trainer.Parameters();
        Dictionary<string, float[]> g2 = trainer.LossAndGradients(batch).Gradients;
        trainer.Step(batch);
        Dictionary<string, float[]> p2 = trainer.Parameters();

        foreach (string name in p0.Keys)
        {
            for (int i = 0; i < p0[name].Length; i++)
            {
                // torch.optim.AdamW: p ← p(1 − lr·wd); m, v moments; p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps).
                double m = (1 - s.Beta1) * g1[name][i], v = (1 - s.Beta2) * g1[name][i] * g1[name][i];
                double expected1 = (p0[name][i] * (1 - (s.Lr * s.WeightDecay))) - (s.Lr / (1 - s.Beta1) * m / ((Math.Sqrt(v) / Math.Sqrt(1 - s.Beta2)) + s.Eps));
                m = (s.Beta1 * m) + ((1 - s.Beta1) * g2[name][i]);
                v = (s.Beta2 * v) + ((1 - s.Beta2) * g2[name][i] * g2[name][i]);
                double expected2 = (p1[name][i] * (1 - (s.Lr * s.WeightDecay))) - (s.Lr / (1 - (s.Beta1 * s.Beta1)) * m / ((Math.Sqrt(v) / Math.Sqrt(1 - (s.Beta2 * s.Beta2))) + s.Eps));
                Assert.AreEqual(expected1, p1[name][i], 1e-6, $"{name}[{i}] after step 1");
                Assert.AreEqual(expected2, p2[name][i], 1e-6, $"{name}[{i}] after step 2");
            }
        }
    }
}
