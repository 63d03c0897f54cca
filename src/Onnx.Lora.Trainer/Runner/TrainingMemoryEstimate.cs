using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.IO;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Conversion;
using Onnx.Lora.Trainer.Autodiff;
using Onnx.Lora.Trainer.Config;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>The shape facts of a decoder model that its training memory depends on, read without loading weights.</summary>
/// <param name="WeightBytes">Bytes of all weights (external data included).</param>
/// <param name="Hidden">Model width.</param>
/// <param name="Intermediate">MLP width.</param>
/// <param name="Layers">Decoder layers.</param>
/// <param name="Heads">Attention heads.</param>
/// <param name="Vocab">Vocabulary size (logits width).</param>
/// <param name="LinearInOutSum">Σ (in + out) over the linear layers of the decoder: LoRA of rank r on all of them has r·Σ parameters.</param>
public sealed record ModelShape(long WeightBytes, int Hidden, int Intermediate, int Layers, int Heads, int Vocab, long LinearInOutSum);

/// <summary>
/// A rough estimate of a training run's peak memory, by part, in bytes (see <see cref="Estimate"/> for the formula).
/// </summary>
/// <param name="Weights">Frozen weights as ONNX Runtime holds them.</param>
/// <param name="Activations">Saved forward activations and their gradients for one micro-batch, with the safety factor.</param>
/// <param name="Adapter">LoRA parameters, gradients, AdamW moments, accumulators and checkpoint copies.</param>
/// <param name="Data">Tokenized dataset in memory.</param>
/// <param name="Runtime">.NET runtime, ONNX Runtime and its arena, fixed.</param>
public sealed record TrainingMemoryEstimate(long Weights, long Activations, long Adapter, long Data, long Runtime)
{
    /// <summary>Fixed cost of the process: .NET, ONNX Runtime, code and arena bookkeeping (a stories260K run peaks at ~160 MiB).</summary>
    public const long RuntimeBytes = 200L << 20;

    /// <summary>
    /// Margin on the activation and loss terms: the per-token coefficients are fitted to measured peaks (see
    /// <see cref="Estimate"/>), and other shapes and ops may keep a little more.
    /// </summary>
    public const double ActivationSafetyFactor = 1.1;

    private const long MaxConfigBytes = 16 << 20;

    // Per layer and token (see LayerActivationsPerToken), fitted in BENCHMARKS.md "Real model sizes".
    private const double HiddenCoefficient = 13, IntermediateCoefficient = 6, AttentionCoefficient = 1.1;

    /// <summary>
    /// What a run holds outside its steps: building the artifacts (the model read once, in memory when its weights are
    /// inline) and, at the end, writing the trained model from the weights' file mapping: 1.35 × the weights + runtime
    /// (measured with `train` on the 135M shape at 64 × 1, where no step is larger: 830 MiB building, 1075 MiB writing,
    /// against 1061 MiB; the earlier 2 × the weights + runtime predates the single read of the model).
    /// </summary>
    public long Build => BuildBytes ?? BuildPeak(Weights);

    /// <summary>The build's peak when it is known better (<see cref="FromGraph"/>).</summary>
    public long? BuildBytes { get; init; }

    /// <summary>The whole estimate: the larger of the training peak and the build peak.</summary>
    public long Total => Math.Max(Weights + Activations + Adapter + Data + Runtime, Build);

    /// <summary>"~1.2 GiB (weights 0.40, activations 0.60, ... GiB)"; parts in MiB when the whole is under 1 GiB.</summary>
    public override string ToString()
    {
        bool gib = Total >= 1L << 30;
        string G(long bytes) => gib ? (bytes / (1024.0 * 1024 * 1024)).ToString("F2", CultureInfo.InvariantCulture) : (bytes / (1024.0 * 1024)).ToString("F0", CultureInfo.InvariantCulture);
        return string.Create(CultureInfo.InvariantCulture,
            $"~{SystemResources.FormatGiB(Total)} (weights {G(Weights)}, activations {G(Activations)}, adapter+optimizer {G(Adapter)}, data {G(Data)}, runtime {G(Runtime)} {(gib ? "GiB" : "MiB")}; building the graphs {G(Build)})");
    }

    /// <summary>
    /// Estimates the peak memory of training <paramref name="shape"/> with <paramref name="options"/>, from what a run
    /// allocates (LoraTrainingSession: no prepacked weight copies, no ORT memory pattern; the build's garbage returned):
    /// <code>
    /// weights     = W                                           (held once: ORT maps weights.data, and the eval session maps the same file)
    /// activations = 1.1 · 4 B · b·s · [ L · (CH·h + CI·i + CA·heads·s) + loss ]
    ///               (per layer and token, the forward values the backward graph keeps plus the backward's transients:
    ///               norms, q/k/v/o, RoPE, residuals, LoRA branches, the MLP, the attention probabilities; see
    ///               <see cref="LayerActivationsPerToken"/>; the loss: <see cref="LossPerToken"/>)
    /// adapter     = 4 B · r·Σ(in+out) · 8                       (values, gradients, 2 moments, accumulators, 3 checkpoint copies)
    /// data        = 10 · JSONL bytes                            (≈ 1 token per 3 bytes, ids + mask + labels as int64 ≈ 30 B a token)
    /// runtime     = 200 MiB
    /// </code>
    /// The coefficients are fitted to the measured peak RSS (VmHWM) of random-weight Llamas in the SmolLM-135M shape at
    /// seq×batch 256×2, 512×2 and 1024×1, the Qwen2.5-0.5B shape at 256×1, and stories260K (width 64, 8 heads, where
    /// attention dominates) at 512×16, 256×16 and 128×8 in its three forms; BENCHMARKS.md, "Real model sizes", has the
    /// estimate / peak ratios. The spread they leave is ONNX Runtime's arena: it grows by doubling regions, and the
    /// resident memory follows what it holds, 1.06× (135M, 256×2) to 1.5× (512×2) what the step has in use.
    /// With gradient checkpointing the activation term is <see cref="RecomputedActivationsPerToken"/>.
    /// </summary>
    public static TrainingMemoryEstimate Estimate(TrainOptions options, ModelShape shape, long dataBytes)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(shape);
        double tokens = (double)options.BatchSize * options.SeqLength;
        double loss = LossPerToken(options, shape);
        double perToken = options.GradientCheckpointing
            ? RecomputedActivationsPerToken(shape, options.SeqLength, loss)
            : (shape.Layers * LayerActivationsPerToken(shape, options.SeqLength)) + loss;
        long activations = (long)(ActivationSafetyFactor * 4 * tokens * perToken);
        long adapter = 4L * options.LoraOrDefault.Rank * shape.LinearInOutSum * 8;
        return new TrainingMemoryEstimate(shape.WeightBytes, activations, adapter, 10 * dataBytes, RuntimeBytes);
    }

    /// <summary>
    /// Floats per token one decoder layer keeps for its backward: norms, q/k/v/o, RoPE, residuals and LoRA branches
    /// ≈ CH·h, the MLP ≈ CI·i, the attention probabilities CA·heads·s (fitted, see <see cref="Estimate"/>).
    /// </summary>
    public static double LayerActivationsPerToken(ModelShape shape, int seqLength)
    {
        ArgumentNullException.ThrowIfNull(shape);
        return (HiddenCoefficient * shape.Hidden) + (IntermediateCoefficient * shape.Intermediate) + (AttentionCoefficient * shape.Heads * seqLength);
    }

    /// <summary>
    /// Floats per token the loss holds at its peak. A frozen head is fused with its cross-entropy and computed in
    /// <c>LinearCrossEntropy.Chunks</c> row chunks, each holding its scores, their exp and softmax − onehot at once:
    /// 3 · V / chunks. An adapted head (a target selects <c>lm_head</c>) keeps whole logits: the base product, the LoRA
    /// branch's and their sum, 3 · V (ORT's profiler, BENCHMARKS.md).
    /// </summary>
    public static double LossPerToken(TrainOptions options, ModelShape shape)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(shape);
        bool adaptedHead = options.LoraOrDefault.Selects("lm_head", isOutputHead: true);
        return adaptedHead ? 3.0 * shape.Vocab : 3.0 * shape.Vocab / Artifacts.LinearCrossEntropy.Chunks;
    }

    /// <summary>
    /// Floats per token alive at the peak of a step with gradient checkpointing (<c>ActivationRecomputation</c>), from
    /// what ONNX Runtime's profiler shows such a step allocate (SmolLM-135M shape, seq 1024, BENCHMARKS.md):
    /// <code>
    /// L · h                          every layer's input (the residual stream), kept from the forward for the re-run
    /// + loss                         <see cref="LossPerToken"/>
    /// + one layer + 2 · heads·s      one layer recomputed, with its backward: the attention probabilities, their
    ///                                gradient and the product of the two (softmax's gradient) alive together
    /// </code>
    /// The loss and the layer term come one after the other in a step; their sum bounds either. Only one layer's
    /// activations are alive at a time because the training graph also runs each layer's weight gradients right after
    /// that layer's backward (<c>GradientOutputOrder</c>).
    /// </summary>
    public static double RecomputedActivationsPerToken(ModelShape shape, int seqLength, double lossPerToken)
    {
        ArgumentNullException.ThrowIfNull(shape);
        return ((double)shape.Layers * shape.Hidden) + lossPerToken + LayerActivationsPerToken(shape, seqLength) + AttentionBackwardPerToken(shape, seqLength);
    }

    /// <summary>
    /// Floats per token that the attention backward of one layer holds beside the probabilities it kept: their gradient
    /// and softmax's gradient, [heads, s, s] each, alive together at the softmax backward (ORT's profiler, BENCHMARKS.md).
    /// </summary>
    private static double AttentionBackwardPerToken(ModelShape shape, int seqLength) => 2.0 * shape.Heads * seqLength;

    private static long BuildPeak(long weights) => (long)(1.35 * weights) + RuntimeBytes;

    /// <summary>
    /// The estimate read off the training graph (<see cref="TrainingGraphMemory"/>): what one step really allocates
    /// instead of per-token coefficients.
    /// <code>
    /// weights     = frozen initializers + values ORT folds at session creation  (held once: weights.data is mapped)
    /// activations = the walk's peak of live intermediates (sizes from shapes, released after their last reader)
    /// adapter     = trainable bytes · 8                          (values, gradients, 2 moments, accumulators, 3 checkpoint copies)
    /// data        = 10 · JSONL bytes
    /// runtime     = 200 MiB                                      (.NET + ORT before the first step: 135M shape, 203 MiB after the session)
    /// build       = 2 · frozen weights + runtime                  (building the artifacts reads the model and compares the
    ///                                                              eval model's weights with weights.data: 135M shape 1.38 GiB)
    /// </code>
    /// </summary>
    public static TrainingMemoryEstimate FromGraph(GraphMemoryProfile profile, long dataBytes)
    {
        ArgumentNullException.ThrowIfNull(profile);
        return new TrainingMemoryEstimate(profile.FrozenWeightBytes + profile.FoldedBytes, profile.PeakActivationBytes, 8 * profile.TrainableBytes, 10 * dataBytes, RuntimeBytes)
        {
            BuildBytes = BuildPeak(profile.FrozenWeightBytes),
        };
    }

    /// <summary>Throws unless the estimate fits <paramref name="budget"/>.</summary>
    /// <exception cref="ResourceLimitException">It does not; the message has the estimate by part and what is available.</exception>
    public void EnsureFits(MemoryBudget budget)
    {
        if (Total > budget.Bytes)
        {
            throw new ResourceLimitException($"Training needs {this} but {SystemResources.FormatGiB(budget.Bytes)} is available ({budget.Source}); lower --batch-size or --seq-length (use --gradient-accumulation-steps to keep the effective batch), or raise --memory-limit.");
        }
    }

    /// <summary>The shape of a llama2.c checkpoint, from its header.</summary>
    public static ModelShape ShapeOf(Llama2cHeader h)
    {
        ArgumentNullException.ThrowIfNull(h);
        long perLayer = (2L * (h.Dim + h.Dim)) + (2L * (h.Dim + h.KvDim)) + (3L * (h.Dim + h.HiddenDim));
        return new ModelShape(h.FloatCount * sizeof(float), h.Dim, h.HiddenDim, h.Layers, h.Heads, h.Vocab, perLayer * h.Layers);
    }

    /// <summary>The shape of an ONNX decoder, from its initializer dims (weights stay on disk).</summary>
    /// <param name="model">The decoder.</param>
    /// <param name="configHeads">
    /// Attention heads from the model's config (<see cref="HeadsFromConfig"/>), used when no fused attention op names
    /// them: a graph of plain MatMul/Softmax attention does not say how many heads its reshapes split.
    /// </param>
    public static ModelShape ShapeOf(Model model, int? configHeads = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Onnx.Lora.Ir.Graph g = model.Graph;
        long weightBytes = g.Initializers.Values.Sum(v => v.Initializer!.ByteLength);
        Tensor? table = g.Nodes.Where(n => n.Is("Gather") && n.Inputs[0]?.Initializer is { Dims.Count: 2 }).Select(n => n.Inputs[0]!.Initializer!).MaxBy(t => t.ByteLength);
        int vocab = table is null ? 0 : (int)table.Dims[0];
        int hidden = table is null ? 0 : (int)table.Dims[1];
        var linear = g.Nodes.Where(n => OpTable.Default.Find(n)?.Role == OpRole.Linear)
            .Select(n => n.Inputs.Count > 1 ? n.Inputs[1]?.Initializer : null).OfType<Tensor>().Where(t => t.Dims.Count == 2 && t.Dims[0] != vocab && t.Dims[1] != vocab).ToList();
        int intermediate = linear.Count == 0 ? 4 * hidden : (int)linear.Max(t => Math.Max(t.Dims[0], t.Dims[1]));
        int layers = Math.Max(1, g.Nodes.Count(n => OpTable.Default.Find(n)?.Role == OpRole.Attention));
        long? heads = g.Nodes.Select(n => n.Attributes.TryGetValue("num_heads", out Attr? a) && a.Value is long v ? v : (long?)null).FirstOrDefault(h => h is > 0);
        return new ModelShape(weightBytes, hidden, intermediate, layers, (int)(heads ?? configHeads ?? ReshapeHeads(g, hidden) ?? Math.Max(1, hidden / 64)), vocab, linear.Sum(t => t.Dims[0] + t.Dims[1]));
    }

    /// <summary>
    /// Heads of plain attention from the constant shapes its Reshapes split the width into: [.., .., heads, head_dim]
    /// with heads · head_dim = <paramref name="hidden"/> (the query's split; keys and values of grouped-query attention
    /// split a narrower width). Null when no such Reshape exists.
    /// </summary>
    private static int? ReshapeHeads(Onnx.Lora.Ir.Graph g, int hidden) => g.Nodes
        .Where(n => n.Is("Reshape") && n.Inputs.Count > 1 && n.Inputs[1]?.Initializer is { Dims: [4] } t && t.DataType == DataType.Int64)
        .Select(n => n.Inputs[1]!.Initializer!.ToArray<long>())
        .Where(d => d[2] > 1 && d[3] > 0 && d[2] * d[3] == hidden)
        .Select(d => (int?)d[2])
        .Max();

    /// <summary>
    /// num_attention_heads (n_head for GPT-2) from the Hugging Face config.json beside <paramref name="modelPath"/>, as
    /// Optimum exports it; null when there is none or it does not say. A hint for the estimate, so a config that cannot
    /// be read is ignored here (the readers that need it report it).
    /// </summary>
    public static int? HeadsFromConfig(string modelPath)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        string config = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? ".", "config.json");
        try
        {
            if (!File.Exists(config))
            {
                return null;
            }

            using var doc = System.Text.Json.JsonDocument.Parse(InputFile.ReadAllBytes(config, "model config", MaxConfigBytes, m => new IOException(m)));
            foreach (string key in new[] { "num_attention_heads", "n_head" })
            {
                if (doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object && doc.RootElement.TryGetProperty(key, out var v)
                    && v.TryGetInt32(out int heads) && heads > 0)
                {
                    return heads;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            return null;
        }

        return null;
    }
}
