using Microsoft.ML.Tokenizers;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

[TestClass]
public sealed class Llama2cConverterTests
{
    // The reference conversion matches llama2.c's run.c within 1.3e-5; ours is HF's layout (rotate-half on permuted q/k
    // rows), the same function up to float rounding, held to the same bound.
    private const float LogitTolerance = 1.3e-5f;

    private static string DefaultCheckpoint => Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");

    [TestMethod]
    public void Convert_Stories260K_LogitsMatchIndependentReferenceConversion()
    {
        using var dir = new TempDir();
        using Model model = Llama2cConverter.Convert(DefaultCheckpoint);
        using var ours = ModelRunner.FromModel(model, dir);
        using var reference = new ModelRunner(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        long[] ids = [1, 403, 407, 261, 378, 17, 300, 98, 410, 90, 2, 7, 511, 0, 256, 300];

        float[] expected = reference.Logits(ids, batch: 2);
        float[] actual = ours.Logits(ids, batch: 2);

        Assert.AreEqual(expected.Length, actual.Length);
        float maxDiff = OrtRunner.MaxAbsDiff(expected, actual);
        Assert.IsTrue(maxDiff <= LogitTolerance, $"max |diff| {maxDiff} > {LogitTolerance}");
        Assert.IsTrue(expected.Max() - expected.Min() > 1f, "reference logits must not be flat");
    }

    [TestMethod]
    public void Convert_Stories260KWithoutKvCache_SameLinearNodeNamesAndOpsAsReferenceConversion()
    {
        using Model ours = Llama2cConverter.Convert(DefaultCheckpoint, kvCache: false);
        using Model reference = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        // The reference keeps llama2.c's interleaved rotary; ours is HF's rotate-half, so only the rotary nodes differ.
        static string[] Signature(Model m) => m.Graph.Nodes.Where(n => n.Is("MatMul") || n.Is("Gather") || n.Is("Softmax") || n.Is("Sigmoid"))
            .Where(n => !n.Name.Contains("rotary", StringComparison.Ordinal))
            .Select(n => $"{n.Name} {n.Domain}:{n.OpType}").Order(StringComparer.Ordinal).ToArray();

        CollectionAssert.AreEqual(Signature(reference), Signature(ours));
        CollectionAssert.AreEqual(
            reference.Graph.Initializers.Values.Select(v => v.Initializer!.ToString()).Where(s => s.StartsWith("onnx::MatMul_", StringComparison.Ordinal)).ToArray(),
            ours.Graph.Initializers.Values.Select(v => v.Initializer!.ToString()).Where(s => s.StartsWith("onnx::MatMul_", StringComparison.Ordinal)).ToArray());
    }

    [TestMethod]
    public void Convert_Stories260K_GreedyDecodingTellsTheKnownStory()
    {
        using var dir = new TempDir();
        using Model model = Llama2cConverter.Convert(DefaultCheckpoint);
        using var runner = ModelRunner.FromModel(model, dir);
        var tokens = new List<long> { 1 };
        const int Vocab = 512;
        for (int step = 0; step < 30; step++)
        {
            float[] logits = runner.Logits([.. tokens]);
            ReadOnlySpan<float> last = logits.AsSpan(logits.Length - Vocab, Vocab);
            tokens.Add(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(last));
        }

        using var stream = File.OpenRead(Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model"));
        var tokenizer = LlamaTokenizer.Create(stream);
        string text = tokenizer.Decode(tokens.Skip(1).Select(t => (int)t));

        StringAssert.StartsWith(text, "Once upon a time, there was a little girl named Lily", text);
    }

    [TestMethod]
    public void Convert_NamedWeights_UsesModuleNamesWithSameLogits()
    {
        using var dir = new TempDir();
        using Model anonymous = Llama2cConverter.Convert(DefaultCheckpoint);
        using Model named = Llama2cConverter.Convert(DefaultCheckpoint, InitializerNaming.Named);
        Assert.IsTrue(named.Graph.Initializers.Contains("model.layers.4.mlp.down_proj.weight"));
        Assert.IsTrue(anonymous.Graph.Initializers.Values.Any(v => v.Name.StartsWith("onnx::MatMul_", StringComparison.Ordinal)));
        Node q = named.Graph.Nodes.Single(n => n.Name == "/model/layers.0/self_attn/q_proj/MatMul");
        Assert.AreEqual("model.layers.0.self_attn.q_proj.weight", q.Inputs[1]!.Name);

        using var a = ModelRunner.FromModel(anonymous, dir, "a.onnx");
        using var b = ModelRunner.FromModel(named, dir, "b.onnx");
        long[] ids = [1, 5, 9, 300];
        CollectionAssert.AreEqual(a.Logits(ids), b.Logits(ids));
    }

    [TestMethod]
    public void Convert_UntiedCheckpoint_ReadsClassifierAfterFreqCis()
    {
        // Same weights with vocab_size negated and the embedding appended as the classifier: same logits as tied.
        using var dir = new TempDir();
        byte[] bytes = File.ReadAllBytes(DefaultCheckpoint);
        const int EmbeddingBytes = 512 * 64 * 4;
        byte[] untied = [.. bytes, .. bytes.AsSpan(28, EmbeddingBytes)];
        BitConverter.GetBytes(-512).CopyTo(untied, 20);
        string path = dir.File("untied.bin");
        File.WriteAllBytes(path, untied);
        string tiedOnnx = dir.File("tied.onnx");
        string untiedOnnx = dir.File("untied.onnx");
        Llama2cConverter.ConvertToFile(DefaultCheckpoint, tiedOnnx);
        Llama2cConverter.ConvertToFile(path, untiedOnnx, InitializerNaming.Named);

        using (Model model = OnnxReader.Load(untiedOnnx))
        {
            Assert.IsTrue(model.Graph.Initializers.Contains("lm_head.weight"));
        }

        using var a = new ModelRunner(tiedOnnx);
        using var b = new ModelRunner(untiedOnnx);
        long[] ids = [1, 403, 407, 261];
        CollectionAssert.AreEqual(a.Logits(ids), b.Logits(ids));
    }

    [TestMethod]
    public void Open_TruncatedFile_ThrowsNamingFileAndExpectedSize()
    {
        using var dir = new TempDir();
        string path = dir.File("short.bin");
        byte[] bytes = File.ReadAllBytes(DefaultCheckpoint);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 100)]);

        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => Llama2cConverter.Convert(path));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "truncated");
        StringAssert.Contains(e.Message, bytes.Length.ToString("N0", System.Globalization.CultureInfo.CurrentCulture));
    }

    [TestMethod]
    public void Open_ShorterThanHeader_ThrowsNamingHeader()
    {
        using var dir = new TempDir();
        string path = dir.File("tiny.bin");
        File.WriteAllBytes(path, new byte[10]);

        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => Llama2cConverter.Convert(path));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "28-byte header");
    }

    [TestMethod]
    public void Open_BadHeader_ThrowsListingFields()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.bin");
        byte[] bytes = File.ReadAllBytes(DefaultCheckpoint);
        BitConverter.GetBytes(3).CopyTo(bytes, 12); // n_heads = 3 does not divide dim 64
        File.WriteAllBytes(path, bytes);

        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => Llama2cConverter.Convert(path));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "n_heads=3");
    }

    [TestMethod]
    public void Open_GarbageHeader_ThrowsInvalidHeader()
    {
        using var dir = new TempDir();
        string path = dir.File("garbage.bin");
        File.WriteAllBytes(path, Enumerable.Repeat((byte)0xFF, 4096).ToArray());

        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => Llama2cConverter.Convert(path));
        StringAssert.Contains(e.Message, "invalid header");
    }

    [TestMethod]
    public void Open_MissingFile_ThrowsNamingFile()
    {
        var e = Assert.ThrowsExactly<OnnxSerializationException>(() => Llama2cConverter.Convert("/nonexistent/stories.bin"));
        StringAssert.Contains(e.Message, "/nonexistent/stories.bin");
    }
}
