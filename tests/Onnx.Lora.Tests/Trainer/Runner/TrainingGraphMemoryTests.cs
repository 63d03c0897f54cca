using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Runner;

namespace Onnx.Lora.Tests.Trainer.Runner;

/// <summary>The training graph's memory walk (<see cref="TrainingGraphMemory"/>) and the arena replay, against hand arithmetic.</summary>
[TestClass]
public sealed class TrainingGraphMemoryTests
{
    [TestMethod]
    public void Analyze_Chain_PeakIsTheLargestPairOfNeighboursAlive()
    {
        // x [b, s, 8] → MatMul W[8, 32] → a [b, s, 32] → Relu (in place over a) → MatMul V[32, 4] → y (graph output).
        var b = new GraphBuilder("chain");
        Value x = b.Input("x", DataType.Float, "batch", "seq", 8);
        Value a = b.MatMul(x, b.Floats("W", [8, 32], new float[8 * 32]));
        Value r = b.Op("Relu", [a]);
        Value y = b.MatMul(r, b.Floats("V", [32, 4], new float[32 * 4]));
        GraphBuilder.Typed(a, DataType.Float, new Dim("batch"), new Dim("seq"), new Dim(32));
        GraphBuilder.Typed(r, DataType.Float, new Dim("batch"), new Dim("seq"), new Dim(32));
        b.Output(y, "y", DataType.Float, "batch", "seq", 4);

        GraphMemoryProfile p = TrainingGraphMemory.Analyze(b.Model, batch: 3, seq: 5, trainable: ["V"]);

        // a: 3·5·32·4 B = 1920 B; Relu writes over a (its last reader), y is the caller's buffer: the peak is a alone.
        Assert.AreEqual(1920, p.PeakActivationBytes);
        Assert.AreEqual(8 * 32 * 4, p.FrozenWeightBytes);
        Assert.AreEqual(32 * 4 * 4, p.TrainableBytes);
        // 2·M·N·K: 15·32·8 and 15·4·32, times 2.
        Assert.AreEqual(2.0 * ((15 * 32 * 8) + (15 * 4 * 32)), p.MatMulFlops);
    }

    [TestMethod]
    public void Analyze_ValueReadLater_StaysAliveUntilItsLastReader()
    {
        // a = x·W is read again at the end (as a backward pass reads a saved activation): a and c are alive together.
        var b = new GraphBuilder("saved");
        Value x = b.Input("x", DataType.Float, "batch", "seq", 8);
        Value a = b.MatMul(x, b.Floats("W", [8, 16], new float[8 * 16]));
        Value c = b.MatMul(a, b.Floats("U", [16, 64], new float[16 * 64]));
        Value d = b.Op("Tanh", [c]);
        Value e = b.Op("ReduceSum", [d], [Attr.Ints("axes", 2), Attr.Int("keepdims", 1)]);
        Value f = b.Mul(a, e);
        foreach ((Value v, long w) in new[] { (a, 16L), (c, 64L), (d, 64L), (e, 1L), (f, 16L) })
        {
            GraphBuilder.Typed(v, DataType.Float, new Dim("batch"), new Dim("seq"), new Dim(w));
        }

        b.Output(f, "f", DataType.Float, "batch", "seq", 16);

        GraphMemoryProfile p = TrainingGraphMemory.Analyze(b.Model, batch: 2, seq: 10, trainable: []);

        // Tanh writes over c; at ReduceSum a (2·10·16·4 = 1280) + d (5120) + e (80) are alive: 6480 B.
        Assert.AreEqual(6480, p.PeakActivationBytes);
        Assert.IsGreaterThanOrEqualTo(p.PeakActivationBytes, p.ArenaBytes, "the arena touches at least the live peak");
    }

    [TestMethod]
    public void Analyze_OutputsNamedByIdentity_TakesTheWritersInOrtsLeafOrder()
    {
        // a = x·Wa is read by c = a·Wc and by ga (a "weight gradient"); gc comes from e = c·We. ORT removes the Identity
        // that names each output, so its leaves are the writers ga (index 1) and gc (4), and it takes the higher index
        // first: gc's cone runs while a waits for ga, and a, c and e are alive together at e. Walked from the
        // Identities instead (out_a's is last), ga would run first and the peak would be two buffers, not three.
        var b = new GraphBuilder("leaves");
        Value x = b.Input("x", DataType.Float, "batch", "seq", 8);
        Value a = b.MatMul(x, b.Floats("Wa", [8, 64], new float[8 * 64]));
        Value ga = b.Op("ReduceSum", [a], [Attr.Ints("axes", 2), Attr.Int("keepdims", 1)]);
        Value c = b.MatMul(a, b.Floats("Wc", [64, 64], new float[64 * 64]));
        Value e = b.MatMul(c, b.Floats("We", [64, 64], new float[64 * 64]));
        Value gc = b.Op("ReduceSum", [e], [Attr.Ints("axes", 2), Attr.Int("keepdims", 1)]);
        foreach ((Value v, long w) in new[] { (a, 64L), (c, 64L), (e, 64L), (ga, 1L), (gc, 1L) })
        {
            GraphBuilder.Typed(v, DataType.Float, new Dim("batch"), new Dim("seq"), new Dim(w));
        }

        Value outC = b.Op("Identity", [gc]);
        Value outA = b.Op("Identity", [ga]);
        b.Output(outC, "out_c", DataType.Float, "batch", "seq", 1);
        b.Output(outA, "out_a", DataType.Float, "batch", "seq", 1);

        GraphMemoryProfile p = TrainingGraphMemory.Analyze(b.Model, batch: 2, seq: 4, trainable: []);

        // 2·4·64·4 B = 2048 B a buffer: a + c + e at e.
        Assert.AreEqual(3 * 2048, p.PeakActivationBytes, p.PeakNode);
    }

    [TestMethod]
    public void ForModel_WithRecomputation_WalksALowerPeakOnStories()
    {
        string path = Fixtures.Path("stories260K", "reference-onnx", "model_named_weights.onnx");
        GraphMemoryProfile off, on;
        using (Model model = OnnxReader.Load(path))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 1, nonZeroB: false);
            off = TrainingGraphMemory.ForModel(model, batch: 4, seq: 256, recomputeActivations: false);
        }

        using (Model model = OnnxReader.Load(path))
        {
            LoraForTraining.Inject(model, rank: 4, alpha: 8, seed: 1, nonZeroB: false);
            on = TrainingGraphMemory.ForModel(model, batch: 4, seq: 256, recomputeActivations: true);
        }

        Console.WriteLine($"WALK | off {off.PeakActivationBytes >> 10} KiB, on {on.PeakActivationBytes >> 10} KiB");
        // Attention probabilities alone: 5 layers · 8 heads · 256² · 4 rows · 4 B = 40 MiB kept without recomputation.
        Assert.IsGreaterThan(40L << 20, off.PeakActivationBytes);
        Assert.IsLessThan(off.PeakActivationBytes / 2, on.PeakActivationBytes);
        Assert.AreEqual(off.FrozenWeightBytes, on.FrozenWeightBytes, 1024, "the same weights (the gates add a few int64 constants)");
    }

    [TestMethod]
    public void Check_WhenTheTrainingGraphNeedsMoreThanTheLimit_RefusesBeforeTheSessionWithBothFigures()
    {
        using var temp = new TempDir();
        Onnx.Lora.Trainer.Artifacts.TrainingArtifacts artifacts = LoraForTraining.StoriesArtifacts(temp, seed: 3);
        var options = new Onnx.Lora.Trainer.Config.TrainOptions { Model = "m", Data = "d", Tokenizer = "t", BatchSize = 8, SeqLength = 256, MemoryLimit = "150MiB" };
        var shape = new ModelShape(1 << 20, 64, 172, 5, 8, 512, 5 * 1000);
        var messages = new List<string>();

        var e = Assert.ThrowsExactly<ResourceLimitException>(() => TrainingGraphMemory.Check(options, artifacts, shape, messages.Add));

        // 150 MiB is below the runtime alone (200 MiB); the walk's activations at 8 × 256 are ~100 MiB more.
        StringAssert.Contains(e.Message, "but 150 MiB is available (--memory-limit)");
        StringAssert.Contains(messages.Single(), "the training graph walk gives");
        TrainingMemoryEstimate fits = TrainingGraphMemory.Check(options with { MemoryLimit = "64GiB" }, artifacts, shape, messages.Add)!;
        Assert.IsGreaterThan(200L << 20, fits.Total);
    }

    [TestMethod]
    public void ArenaSimulation_DoublingRegionsAndBestFit_TouchesWhatWasWritten()
    {
        var arena = new ArenaSimulation();
        object a = new(), b = new(), c = new(), d = new();
        arena.Allocate(a, 600 << 10);      // region 1 MiB, high water 600 KiB
        arena.Allocate(b, 3 << 20);        // no fit: region 2 MiB → doubled to 4 MiB, high water 3 MiB
        arena.Free(a);
        arena.Allocate(c, 500 << 10);      // best fit in region 1's free 1 MiB
        arena.Allocate(d, 5 << 20);        // next region 8 MiB
        Assert.AreEqual((1L << 20) + (4L << 20) + (8L << 20), arena.Reserved);
        Assert.AreEqual((600L << 10) + (3L << 20) + (5L << 20), arena.Touched);
    }
}
