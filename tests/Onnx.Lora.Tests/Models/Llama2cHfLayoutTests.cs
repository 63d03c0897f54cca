using System.Buffers.Binary;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Models;

/// <summary>
/// The llama2.c converter emits Hugging Face's layout (q/k rows permuted as convert_llama_weights_to_hf.py does,
/// rotate-half RoPE), so a PEFT adapter trained on it applies to the HF checkpoint of the same model. Checked against
/// an independent re-derivation from the raw .bin and against the independent llama2.c-layout reference conversion.
/// </summary>
[TestClass]
public sealed class Llama2cHfLayoutTests
{
    private const int Dim = 64, Heads = 8, KvHeads = 4, Vocab = 512, HeadSize = Dim / Heads, KvDim = KvHeads * HeadSize;

    private static string Checkpoint => Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");

    // HF: w.view(heads, d/2, 2, cols).transpose(1, 2).reshape(rows, cols), written as the 4-D index map it is.
    private static float[] HfPermute(float[] w, int heads, int rows, int cols)
    {
        int half = rows / heads / 2;
        var result = new float[w.Length];
        for (int h = 0; h < heads; h++)
        {
            for (int a = 0; a < half; a++)
            {
                for (int b = 0; b < 2; b++)
                {
                    for (int c = 0; c < cols; c++)
                    {
                        result[((((h * 2) + b) * half) + a) * cols + c] = w[((((h * half) + a) * 2) + b) * cols + c];
                    }
                }
            }
        }

        return result;
    }

    // llama2.c order: header, embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim].
    private static float[] RawWeight(int layer, bool key)
    {
        const int Layers = 5;
        long floats = ((long)Vocab * Dim) + ((long)Layers * Dim) + (key ? ((long)Layers * Dim * Dim) + ((long)layer * KvDim * Dim) : (long)layer * Dim * Dim);
        int count = (key ? KvDim : Dim) * Dim;
        byte[] bytes = File.ReadAllBytes(Checkpoint);
        return Enumerable.Range(0, count).Select(i => BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(28 + (int)((floats + i) * 4)))).ToArray();
    }

    [TestMethod]
    [DataRow(0, false)]
    [DataRow(4, true)]
    public void Convert_QkWeights_AreHfPermutedRowsOfTheCheckpoint(int layer, bool key)
    {
        using Model model = Llama2cConverter.Convert(Checkpoint, InitializerNaming.Named, kvCache: false);
        string name = $"model.layers.{layer}.self_attn.{(key ? "k" : "q")}_proj.weight";
        float[] ours = model.Graph.Initializers[name].Initializer!.ToFloat32(); // [in, out]
        int rows = key ? KvDim : Dim;
        float[] hf = HfPermute(RawWeight(layer, key), key ? KvHeads : Heads, rows, Dim); // [out, in]
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < Dim; c++)
            {
                Assert.AreEqual(hf[(r * Dim) + c], ours[(c * rows) + r], 0f, $"{name}[out={r}, in={c}]");
            }
        }
    }

    [TestMethod]
    public void PeftAdapterOnConvertedModel_EqualsItsDeltaUnpermutedOnTheLlama2cLayoutReference()
    {
        using var dir = new TempDir();
        // Our HF-layout model with a q/k LoRA whose B is random (a trained adapter), then its PEFT export.
        using Model lora = Llama2cConverter.Convert(Checkpoint, kvCache: false);
        LoraManifest manifest = LoraInjector.Inject(lora, new LoraOptions { Rank = 4, Alpha = 8, Targets = ["q_proj", "k_proj"], Layers = new HashSet<int> { 0, 3 } });
        var rng = new Random(20261203);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            lora.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], LoraTestModels.Rand(m.Rank * (int)m.OutFeatures, rng, 0.3f)));
        }

        PeftAdapter.Export(LoraWeights.FromModel(lora, manifest, "lora"), dir.File("peft"), manifest.ConfigOrDerived());

        // The independent llama2.c-layout conversion, with each PEFT delta ΔW [out, in] moved back to llama2.c's row
        // order (HF row j·d/2+i of a head is llama2.c row 2i+j) and added to its [in, out] MatMul weight.
        using Model reference = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        foreach (LoraModuleWeights w in PeftAdapter.Import(dir.File("peft")).Modules)
        {
            string[] parts = w.Module.Split('.'); // model.layers.N.self_attn.q_proj → /model/layers.N/self_attn/q_proj/MatMul
            string node = $"/{parts[0]}/{parts[1]}.{parts[2]}/{string.Join('/', parts[3..])}/MatMul";
            Value weight = reference.Graph.Nodes.Single(n => n.Name == node).Inputs[1]!;
            float[] values = weight.Initializer!.ToFloat32();
            int heads = w.Module.EndsWith("k_proj", StringComparison.Ordinal) ? KvHeads : Heads, half = HeadSize / 2, outF = w.OutFeatures;
            float[] scaledB = w.ScaledB(); // [r, out]
            for (int hfRow = 0; hfRow < outF; hfRow++)
            {
                int h = hfRow / HeadSize, j = hfRow % HeadSize / half, i = hfRow % half;
                int llamaRow = (h * HeadSize) + (2 * i) + j;
                for (int c = 0; c < w.InFeatures; c++)
                {
                    double delta = 0;
                    for (int k = 0; k < w.Rank; k++)
                    {
                        delta += w.A[(c * w.Rank) + k] * scaledB[(k * outF) + hfRow];
                    }

                    values[(c * outF) + llamaRow] += (float)delta;
                }
            }

            reference.Graph.Initializers.SetData(weight.Name, InMemoryTensor.FromFloats(weight.Name, weight.Initializer!.Dims, values));
        }

        long[] ids = [1, 403, 407, 261, 378, 17, 300, 98, 410, 90, 2, 7, 511, 0, 256, 300];
        using var ours = ModelRunner.FromModel(lora, dir, "lora.onnx");
        using var theirs = ModelRunner.FromModel(reference, dir, "reference.onnx");
        using var plain = new ModelRunner(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));
        float[] expected = theirs.Logits(ids, batch: 2);
        float[] actual = ours.Logits(ids, batch: 2);
        Assert.IsGreaterThan(0.05f, OrtRunner.MaxAbsDiff(expected, plain.Logits(ids, batch: 2)), "the adapter changes the logits");
        float diff = OrtRunner.MaxAbsDiff(expected, actual);
        Assert.IsLessThanOrEqualTo(2e-5f, diff, $"max |diff| {diff}: same function in HF layout as the delta in llama2.c layout");
    }
}
