using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Trainer.Checkpoints;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Runner;

[TestClass]
public sealed class CheckpointStoreTests
{
    private static LoraManifest Manifest() => new()
    {
        Placement = LoraPlacement.Initializers,
        Dropout = 0.05,
        Config = new LoraConfig { Rank = 2, Alpha = 4, Dropout = 0.05, Targets = ["q_proj", "v_proj"] },
        Modules =
        [
            Module("model.layers.0.self_attn.q_proj", 6, 5, 2),
            Module("model.layers.0.self_attn.v_proj", 6, 3, 2),
        ],
    };

    private static LoraModuleInfo Module(string name, int inF, int outF, int rank) => new()
    {
        Module = name,
        TargetNode = name + "/MatMul",
        BaseWeight = name + ".weight",
        Layout = WeightLayout.InOut,
        InFeatures = inF,
        OutFeatures = outF,
        Rank = rank,
        Alpha = 4,
        LoraA = name + ".lora_A.weight",
        LoraB = name + ".lora_B.weight",
    };

    private static TrainingCheckpoint Checkpoint(int step, int seed)
    {
        var rng = new Random(seed);
        float[] Values(int n) => Enumerable.Range(0, n).Select(i => i switch
        {
            0 => -0.0f,
            1 => float.Epsilon,
            _ => (float)((rng.NextDouble() * 2) - 1) * MathF.Pow(10, rng.Next(-8, 3)),
        }).ToArray();
        var parameters = new List<NamedTensor>();
        foreach (LoraModuleInfo m in Manifest().Modules)
        {
            parameters.Add(new NamedTensor(m.LoraA, [m.InFeatures, m.Rank], Values((int)m.InFeatures * m.Rank)));
            parameters.Add(new NamedTensor(m.LoraB, [m.Rank, m.OutFeatures], Values(m.Rank * (int)m.OutFeatures)));
        }

        var moments = new OptimizerMoments(
            parameters.Select(p => p with { Data = Values(p.Data.Length) }).ToList(),
            parameters.Select(p => p with { Data = Values(p.Data.Length).Select(MathF.Abs).ToArray() }).ToList());
        var random = new DeterministicRandom(seed);
        random.NextUInt64();
        var state = new TrainerState
        {
            GlobalStep = step,
            DataPosition = new DataPosition(1, 17),
            RngState = random.GetState(),
            ScheduleKind = "cosine",
            PeakLearningRate = 2e-4,
            WarmupSteps = 3,
            TotalSteps = 100,
            LastLearningRate = 0.1 + 0.2, // a double whose shortest round-trip text has 17 digits
            OptimizerStep = step - 1,
            TokensSeen = 123456789012,
            BestEvalLoss = Math.PI,
            EvaluationsWithoutImprovement = 1,
            OptionsFingerprint = "abc",
        };
        return new TrainingCheckpoint(parameters, moments, state);
    }

    private static void AssertBitIdentical(IReadOnlyList<NamedTensor> expected, IReadOnlyList<NamedTensor> actual)
    {
        Assert.AreEqual(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].Name, actual[i].Name);
            CollectionAssert.AreEqual(expected[i].Shape, actual[i].Shape);
            CollectionAssert.AreEqual(
                expected[i].Data.Select(BitConverter.SingleToInt32Bits).ToArray(),
                actual[i].Data.Select(BitConverter.SingleToInt32Bits).ToArray(), expected[i].Name);
        }
    }

    [TestMethod]
    public void SaveLoad_RoundTrip_RestoresEveryTensorBitExactlyAndTheState()
    {
        using var temp = new TempDir();
        TrainingCheckpoint original = Checkpoint(step: 20, seed: 1);
        string dir = CheckpointStore.Save(temp.Path, original, Manifest(), keepLast: 0);
        Assert.AreEqual(Path.Combine(temp.Path, "checkpoint-20"), dir);

        TrainingCheckpoint loaded = CheckpointStore.Load(dir);
        AssertBitIdentical(original.Parameters, loaded.Parameters);
        AssertBitIdentical(original.Moments.FirstMoments, loaded.Moments.FirstMoments);
        AssertBitIdentical(original.Moments.SecondMoments, loaded.Moments.SecondMoments);
        Assert.AreEqual(original.State with { RngState = [] }, loaded.State with { RngState = [] });
        CollectionAssert.AreEqual(original.State.RngState, loaded.State.RngState);
        Assert.AreEqual(0.1 + 0.2, loaded.State.LastLearningRate, 0.0, "exact double round trip");

        // Resaving what was loaded gives byte-identical files.
        using var temp2 = new TempDir();
        string again = CheckpointStore.Save(temp2.Path, loaded, Manifest(), keepLast: 0);
        foreach (string file in new[] { CheckpointStore.ParametersFile, CheckpointStore.OptimizerFile, CheckpointStore.StateFile, CheckpointStore.AdapterFile, CheckpointStore.AdapterConfigFile })
        {
            CollectionAssert.AreEqual(File.ReadAllBytes(Path.Combine(dir, file)), File.ReadAllBytes(Path.Combine(again, file)), file);
        }
    }

    [TestMethod]
    public void DiskBytes_ASavedCheckpoint_BoundsWhatWasWrittenWithin1MiB()
    {
        using var temp = new TempDir();
        TrainingCheckpoint checkpoint = Checkpoint(7, 3);

        string folder = CheckpointStore.Save(temp.Path, checkpoint, Manifest(), keepLast: 0);

        long written = Directory.EnumerateFiles(folder).Sum(f => new FileInfo(f).Length);
        long estimate = CheckpointStore.DiskBytes(checkpoint);
        Assert.IsGreaterThanOrEqualTo(written, estimate, "the disk check never lets a checkpoint through that cannot fit");
        Assert.IsLessThanOrEqualTo(written + (1 << 20), estimate, "and asks for at most 1 MiB more than it takes");
    }

    [TestMethod]
    public void Save_PeftAdapter_HasTorchLayoutKeysAndConfig()
    {
        using var temp = new TempDir();
        TrainingCheckpoint cp = Checkpoint(step: 5, seed: 2);
        string dir = CheckpointStore.Save(temp.Path, cp, Manifest(), keepLast: 0, baseModelName: "stories260K");

        // Parse the safetensors file by hand (header length, JSON header, raw little-endian floats).
        byte[] bytes = File.ReadAllBytes(Path.Combine(dir, CheckpointStore.AdapterFile));
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.AreEqual(0, headerLength % 8, "header padded to 8 bytes");
        using JsonDocument header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength).TrimEnd(' '));
        Assert.AreEqual("pt", header.RootElement.GetProperty("__metadata__").GetProperty("format").GetString(), "safetensors metadata as torch writes it");
        JsonElement qa = header.RootElement.GetProperty("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        Assert.AreEqual("F32", qa.GetProperty("dtype").GetString());
        CollectionAssert.AreEqual(new long[] { 2, 6 }, qa.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(), "lora_A is [r, in]");
        JsonElement vb = header.RootElement.GetProperty("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
        CollectionAssert.AreEqual(new long[] { 3, 2 }, vb.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray(), "lora_B is [out, r]");

        // PEFT lora_A[j, i] == our A[i, j] (a transpose, no scaling).
        float[] ours = cp.Parameters.Single(p => p.Name.EndsWith("q_proj.lora_A.weight", StringComparison.Ordinal)).Data;
        long begin = qa.GetProperty("data_offsets")[0].GetInt64();
        for (int i = 0; i < 6; i++)
        {
            for (int j = 0; j < 2; j++)
            {
                float peft = BitConverter.ToSingle(bytes, 8 + headerLength + (int)begin + (((j * 6) + i) * 4));
                Assert.AreEqual(BitConverter.SingleToInt32Bits(ours[(i * 2) + j]), BitConverter.SingleToInt32Bits(peft), $"A[{i},{j}]");
            }
        }

        using JsonDocument config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, CheckpointStore.AdapterConfigFile)));
        JsonElement c = config.RootElement;
        Assert.AreEqual("LORA", c.GetProperty("peft_type").GetString());
        Assert.AreEqual(2, c.GetProperty("r").GetInt32());
        Assert.AreEqual(4.0, c.GetProperty("lora_alpha").GetDouble());
        Assert.AreEqual(0.05, c.GetProperty("lora_dropout").GetDouble());
        CollectionAssert.AreEqual(new[] { "q_proj", "v_proj" }, c.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()).ToArray());
        Assert.AreEqual("stories260K", c.GetProperty("base_model_name_or_path").GetString());
    }

    [TestMethod]
    public void Save_KeepLastTwo_DeletesOlderCheckpoints()
    {
        using var temp = new TempDir();
        foreach (int step in new[] { 10, 20, 30, 40 })
        {
            CheckpointStore.Save(temp.Path, Checkpoint(step, step), Manifest(), keepLast: 2);
        }

        CollectionAssert.AreEqual(new[] { "checkpoint-30", "checkpoint-40" }, CheckpointStore.List(temp.Path).Select(Path.GetFileName).ToArray());
        Assert.AreEqual(2, Directory.GetDirectories(temp.Path).Length, "no leftovers");
        Assert.AreEqual(Path.Combine(temp.Path, "checkpoint-40"), CheckpointStore.FindLatest(temp.Path));
    }

    [TestMethod]
    public void Save_StepsSortNumerically_NotAlphabetically()
    {
        using var temp = new TempDir();
        CheckpointStore.Save(temp.Path, Checkpoint(9, 1), Manifest(), keepLast: 0);
        CheckpointStore.Save(temp.Path, Checkpoint(10, 1), Manifest(), keepLast: 0);
        Assert.AreEqual(Path.Combine(temp.Path, "checkpoint-10"), CheckpointStore.FindLatest(temp.Path));
    }

    [TestMethod]
    public void Save_FailingMidway_LeavesPreviousCheckpointIntactAndLoadable()
    {
        using var temp = new TempDir();
        TrainingCheckpoint first = Checkpoint(step: 10, seed: 3);
        string firstDir = CheckpointStore.Save(temp.Path, first, Manifest(), keepLast: 1);
        Dictionary<string, byte[]> before = Directory.GetFiles(firstDir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);

        int written = 0;
        var e = Assert.ThrowsExactly<CheckpointException>(() => CheckpointStore.Save(temp.Path, Checkpoint(step: 20, seed: 4), Manifest(), keepLast: 1, null,
            afterFileWritten: _ => { if (++written == 3) { throw new IOException("disk full (simulated)"); } }));
        StringAssert.Contains(e.Message, "simulated");
        StringAssert.Contains(e.Message, "checkpoint-20");
        Assert.AreEqual(3, written);

        Assert.AreEqual(firstDir, CheckpointStore.FindLatest(temp.Path), "the failed save is not visible and rotation did not run");
        CollectionAssert.AreEqual(new[] { "checkpoint-10" }, Directory.GetDirectories(temp.Path).Select(Path.GetFileName).ToArray(), "the temporary folder was removed");
        foreach ((string name, byte[] content) in before)
        {
            CollectionAssert.AreEqual(content, File.ReadAllBytes(Path.Combine(firstDir, name)), name);
        }

        AssertBitIdentical(first.Parameters, CheckpointStore.Load(firstDir).Parameters);
    }

    [TestMethod]
    public void Save_AfterAKilledSave_IgnoresAndCleansTheStaleTemporaryFolder()
    {
        using var temp = new TempDir();
        CheckpointStore.Save(temp.Path, Checkpoint(10, 5), Manifest(), keepLast: 0);
        // What a SIGKILL during a save leaves: a hidden, half-written folder.
        string stale = Path.Combine(temp.Path, ".checkpoint-20.0123456789abcdef.tmp");
        Directory.CreateDirectory(stale);
        File.WriteAllText(Path.Combine(stale, CheckpointStore.StateFile), "{ truncated");

        Assert.AreEqual(Path.Combine(temp.Path, "checkpoint-10"), CheckpointStore.FindLatest(temp.Path));
        CheckpointStore.Save(temp.Path, Checkpoint(20, 6), Manifest(), keepLast: 0);
        Assert.IsFalse(Directory.Exists(stale));
        Assert.AreEqual(20, CheckpointStore.Load(CheckpointStore.FindLatest(temp.Path)!).State.GlobalStep);
    }

    [TestMethod]
    public void Save_SameStepTwice_ReplacesTheFolder()
    {
        using var temp = new TempDir();
        CheckpointStore.Save(temp.Path, Checkpoint(10, 7), Manifest(), keepLast: 0);
        TrainingCheckpoint second = Checkpoint(10, 8);
        CheckpointStore.Save(temp.Path, second, Manifest(), keepLast: 0);
        AssertBitIdentical(second.Parameters, CheckpointStore.Load(Path.Combine(temp.Path, "checkpoint-10")).Parameters);
        Assert.AreEqual(1, Directory.GetDirectories(temp.Path).Length);
    }

    [TestMethod]
    public void Save_ParameterShapeDisagreesWithManifest_ThrowsBeforeWritingAnything()
    {
        using var temp = new TempDir();
        TrainingCheckpoint cp = Checkpoint(3, 9);
        var wrong = cp with { Parameters = [cp.Parameters[0] with { Shape = [2, 6] }, .. cp.Parameters.Skip(1)] };
        var e = Assert.ThrowsExactly<CheckpointException>(() => CheckpointStore.Save(temp.Path, wrong, Manifest(), keepLast: 0));
        StringAssert.Contains(e.Message, "q_proj.lora_A.weight");
        Assert.AreEqual(0, Directory.GetDirectories(temp.Path).Length);
    }

    [TestMethod]
    public void Load_TruncatedParameters_ThrowsNamingTheFile()
    {
        using var temp = new TempDir();
        string dir = CheckpointStore.Save(temp.Path, Checkpoint(3, 10), Manifest(), keepLast: 0);
        string file = Path.Combine(dir, CheckpointStore.ParametersFile);
        File.WriteAllBytes(file, File.ReadAllBytes(file)[..40]);
        var e = Assert.ThrowsExactly<CheckpointException>(() => CheckpointStore.Load(dir));
        StringAssert.Contains(e.Message, file);
    }

    [TestMethod]
    public void Save_RsLoraManifest_AdapterConfigRecordsTheUsersAlphaAndUnscaledB()
    {
        using var temp = new TempDir();
        LoraManifest rs = Manifest() with
        {
            Config = new LoraConfig { Rank = 2, Alpha = 4, UseRsLora = true, Targets = ["q_proj", "v_proj"] },
            Modules = [.. Manifest().Modules.Select(m => m with { UseRsLora = true })],
        };
        TrainingCheckpoint cp = Checkpoint(5, 12);
        string dir = CheckpointStore.Save(temp.Path, cp, rs, keepLast: 0);

        using JsonDocument config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, CheckpointStore.AdapterConfigFile)));
        Assert.IsTrue(config.RootElement.GetProperty("use_rslora").GetBoolean());
        Assert.AreEqual(4.0, config.RootElement.GetProperty("lora_alpha").GetDouble(), "the user's alpha, not alpha/√r·r");
        Onnx.Lora.Formats.LoraWeights back = Onnx.Lora.Formats.Peft.PeftAdapter.Import(dir);
        float[] ourB = cp.Parameters.Single(p => p.Name == "model.layers.0.self_attn.q_proj.lora_B.weight").Data;
        CollectionAssert.AreEqual(ourB, back.Find("model.layers.0.self_attn.q_proj")!.B, "B as trained: PEFT applies 4/√2 itself");
        Assert.AreEqual((float)(4 / Math.Sqrt(2)), back.Find("model.layers.0.self_attn.q_proj")!.Scale);
    }

    [TestMethod]
    public void Load_CheckpointFromBeforeHfTrainerState_ReadsOurStateFromTrainerStateJson()
    {
        using var temp = new TempDir();
        TrainingCheckpoint cp = Checkpoint(6, 13);
        string dir = CheckpointStore.Save(temp.Path, cp, Manifest(), keepLast: 0);
        File.Move(Path.Combine(dir, CheckpointStore.ResumeStateFile), Path.Combine(dir, CheckpointStore.StateFile), overwrite: true);

        Assert.AreEqual(cp.State with { RngState = [] }, CheckpointStore.Load(dir).State with { RngState = [] });
    }
}
