using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Artifacts;
using Onnx.Lora.Trainer.Autodiff;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Loss;

namespace Onnx.Lora.Trainer.Runner;

/// <summary>What one step of a training graph holds, walked value by value (see <see cref="TrainingGraphMemory.Analyze"/>).</summary>
/// <param name="FrozenWeightBytes">Initializers that are not trainable (held once: ONNX Runtime maps weights.data).</param>
/// <param name="TrainableBytes">Trainable tensors (their gradients are as large again).</param>
/// <param name="FoldedBytes">Values ONNX Runtime computes once at session creation (nodes of constants only) and keeps.</param>
/// <param name="PeakActivationBytes">Most bytes of intermediate values alive at once, in execution order.</param>
/// <param name="PeakNode">The node at which that peak is reached.</param>
/// <param name="MatMulFlops">FLOPs of the MatMul / FusedMatMul / Gemm nodes of one step (2·M·N·K each).</param>
/// <param name="ArenaBytes">What ONNX Runtime's arena touches serving those values in that order (<see cref="ArenaSimulation"/>): the activations' resident memory.</param>
public sealed record GraphMemoryProfile(long FrozenWeightBytes, long TrainableBytes, long FoldedBytes, long PeakActivationBytes, string PeakNode, double MatMulFlops, long ArenaBytes);

/// <summary>
/// The memory of a training step read off the training graph itself: every value gets its size from its shape with
/// the batch and sequence symbols bound, is allocated when its node runs and released after its last reader, in the
/// graph's (topological) order — the way ONNX Runtime's sequential executor and its arena plan a run with the memory
/// pattern off. Views that ONNX Runtime aliases (Reshape, Squeeze, Unsqueeze, Flatten, Identity) cost nothing; an
/// element-wise op writes over an input that dies at that op, as ORT's in-place planning does.
/// </summary>
public static class TrainingGraphMemory
{
    private static readonly HashSet<string> s_aliases = ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

    private static readonly HashSet<string> s_inPlace =
    [
        "Add", "Sub", "Mul", "Div", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Where",
        "Cast", "Erf", "Softmax", "LogSoftmax", "Sum", "Abs", "Clip", "LeakyRelu", "Gelu", "FastGelu", "QuickGelu",
    ];

    /// <summary>
    /// Walks the built training graph of <paramref name="artifacts"/> for the run's batch and sequence length and stops
    /// the run, before its session opens or any step runs, when the estimate (the larger of the walk and the per-token
    /// estimate of <paramref name="shape"/>) does not fit the memory limit.
    /// </summary>
    /// <exception cref="ResourceLimitException">The estimate exceeds the limit.</exception>
    /// <param name="options">The run's options (batch, sequence length, limit).</param>
    /// <param name="artifacts">The built artifacts.</param>
    /// <param name="shape">The model's sizes for the per-token estimate.</param>
    /// <param name="message">Where the figures are reported.</param>
    /// <param name="walked">The walk taken while the build held the graph; null reads training.onnx to take it.</param>
    public static TrainingMemoryEstimate? Check(TrainOptions options, TrainingArtifacts artifacts, ModelShape shape, Action<string> message, GraphMemoryProfile? walked = null)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(artifacts);
        ArgumentNullException.ThrowIfNull(message);
        if (IsOff(options))
        {
            return null;
        }

        GraphMemoryProfile? profile = walked;
        if (profile is null)
        {
            using Model training = OnnxReader.Load(artifacts.TrainingModelPath);
            profile = Analyze(training, options.BatchSize, options.SeqLength, artifacts.Trainable.Select(t => t.Name).ToArray());
        }

        // NOTE: the walk gives what ONNX Runtime has in use (SmolLM-135M shape: within 3% of its profiler's peak at 256 x 2,
        // 512 x 2 and 1024 x 1), but the resident memory follows what ORT's arena holds, which grows by doubling regions:
        // 1.06x to 1.5x the in-use peak (BENCHMARKS.md, "Real model sizes"). Graphs whose shapes ValueFacts cannot tell
        // (the llama2.c conversion's KV-cache form) read low as well. So the check takes the larger of the walk and the
        // per-token estimate, which is fitted to measured peaks.
        TrainingMemoryEstimate walk = TrainingMemoryEstimate.FromGraph(profile, DataBytes(options));
        TrainingMemoryEstimate perToken = TrainingMemoryEstimate.Estimate(options, shape, DataBytes(options));
        TrainingMemoryEstimate estimate = walk.Total >= perToken.Total ? walk : perToken;
        MemoryBudget budget = Budget(options);
        message($"memory: the training graph walk gives {SystemResources.FormatGiB(walk.Total)}, the per-token estimate {SystemResources.FormatGiB(perToken.Total)}; checking {estimate}; {SystemResources.FormatGiB(budget.Bytes)} available ({budget.Source})");
        estimate.EnsureFits(budget);
        return estimate;
    }

    /// <summary>Whether the user turned the memory checks off (<c>--memory-limit none</c>).</summary>
    public static bool IsOff(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.MemoryLimit?.Equals("none", StringComparison.OrdinalIgnoreCase) == true;
    }

    /// <summary>The memory a run may use: <c>--memory-limit</c>, else what the machine has available.</summary>
    public static MemoryBudget Budget(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.MemoryLimit is { } limit && !IsOff(options)
            ? new MemoryBudget(SystemResources.ParseSize(limit, "memory_limit"), "--memory-limit")
            : SystemResources.AvailableMemory();
    }

    /// <summary>Bytes of the run's JSONL files (training and evaluation).</summary>
    public static long DataBytes(TrainOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return (File.Exists(options.Data) ? new FileInfo(options.Data).Length : 0) + (options.EvalData is { } eval && File.Exists(eval) ? new FileInfo(eval).Length : 0);
    }

    /// <summary>
    /// Builds the training graph of the LoRA model at <paramref name="loraModelPath"/> in memory (as
    /// <see cref="TrainingArtifacts.Build(Onnx.Lora.Ir.Model, string, string, TrainingArtifactsOptions?)"/> does, causal-LM loss, nothing written; external weights stay on disk) and walks it.
    /// </summary>
    /// <exception cref="LoraException">The model has no LoRA manifest or cannot be differentiated.</exception>
    public static GraphMemoryProfile ForModel(string loraModelPath, int batch, int seq, bool recomputeActivations)
    {
        using Model model = OnnxReader.Load(loraModelPath);
        return ForModel(model, batch, seq, recomputeActivations);
    }

    /// <summary>As <see cref="ForModel(string, int, int, bool)"/>, on a loaded LoRA model (changed in place).</summary>
    /// <exception cref="LoraException">The model has no LoRA manifest or cannot be differentiated.</exception>
    public static GraphMemoryProfile ForModel(Model model, int batch, int seq, bool recomputeActivations)
    {
        ArgumentNullException.ThrowIfNull(model);
        string[] trainable = LoraManifest.Read(model)?.TrainableTensors().ToArray()
            ?? throw new LoraException("The model has no LoRA manifest; the memory of its training graph cannot be walked.");
        OpsetUpgrade.Apply(model);
        KvCacheRemoval.Apply(model);
        Value logits = model.Graph.Outputs.FirstOrDefault(o => o.Name == "logits") ?? model.Graph.Outputs[0];
        LossOutputs loss = new CausalLmLoss().Attach(new GraphBuilder(model), logits);
        TrainingGraph.MakeTraining(model, loss.Loss, loss.TokenCount, trainable, recomputeActivations);
        return Analyze(model, batch, seq, trainable);
    }

    /// <summary>Walks the training graph of <paramref name="model"/> for micro-batches of <paramref name="batch"/> rows of <paramref name="seq"/> tokens.</summary>
    /// <param name="model">A training graph (<see cref="Artifacts.TrainingGraph.MakeTraining"/>); weights may stay on disk.</param>
    /// <param name="batch">Rows per micro-batch.</param>
    /// <param name="seq">Tokens per row.</param>
    /// <param name="trainable">Names of the trainable tensors.</param>
    public static GraphMemoryProfile Analyze(Model model, int batch, int seq, IReadOnlyCollection<string> trainable)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(trainable);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        var facts = new ValueFacts(OpTable.Default);
        var symbols = BindSymbols(graph, batch, seq);
        var trainableSet = new HashSet<string>(trainable, StringComparer.Ordinal);

        long frozen = 0, trainableBytes = 0;
        foreach (Value init in graph.Initializers.Values)
        {
            if (trainableSet.Contains(init.Name))
            {
                trainableBytes += init.Initializer!.ByteLength;
            }
            else
            {
                frozen += init.Initializer!.ByteLength;
            }
        }

        // Last reader of every value, in execution order; graph outputs are written into the caller's buffers.
        List<Node> order = ExecutionOrder(graph);
        var lastUse = new Dictionary<Value, int>(ReferenceEqualityComparer.Instance);
        var constant = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < order.Count; i++)
        {
            Node node = order[i];
            foreach (Value? input in node.Inputs)
            {
                if (input is not null)
                {
                    lastUse[input] = i;
                }
            }

            if (node.Inputs.All(v => v is null || (v.Initializer is not null && !trainableSet.Contains(v.Name)) || constant.Contains(v)))
            {
                constant.UnionWith(node.Outputs);
            }
        }

        var owner = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance); // alias → the buffer it views
        var live = new Dictionary<Value, long>(ReferenceEqualityComparer.Instance);
        var arena = new ArenaSimulation();
        long current = 0, peak = 0, folded = 0;
        string peakNode = string.Empty;
        double flops = 0;
        for (int i = 0; i < order.Count; i++)
        {
            Node node = order[i];
            long[]?[] outShapes = node.Outputs.Select(o => Bound(facts.ShapeOf(o), symbols)).ToArray();
            flops += MatMulFlops(node, facts, symbols);
            for (int k = 0; k < node.Outputs.Count; k++)
            {
                Value output = node.Outputs[k];
                if (output.Name.Length == 0)
                {
                    continue;
                }

                long bytes = Bytes(outShapes[k], facts.TypeOf(output)) ?? Fallback(node, facts, symbols);
                if (constant.Contains(output))
                {
                    folded += bytes;
                    continue;
                }

                if (output.IsGraphOutput)
                {
                    continue;
                }

                if (s_aliases.Contains(node.OpType) && node.Inputs[0] is { } viewed && Root(owner, viewed) is { } root && live.ContainsKey(root))
                {
                    owner[output] = root;
                    Extend(lastUse, root, output);
                    continue;
                }

                Value? reused = s_inPlace.Contains(node.OpType)
                    ? node.Inputs.OfType<Value>().Select(v => Root(owner, v)).FirstOrDefault(v => v is not null && live.TryGetValue(v, out long size) && size == bytes && lastUse.GetValueOrDefault(v) == i)
                    : null;
                if (reused is not null)
                {
                    owner[output] = reused;
                    Extend(lastUse, reused, output);
                    continue;
                }

                live[output] = bytes;
                arena.Allocate(output, bytes);
                current += bytes;
            }

            if (current > peak)
            {
                peak = current;
                peakNode = $"{node.Name} ({node.OpType})";
            }

            foreach (Value? read in node.Inputs.Concat(node.Outputs))
            {
                if (read is not null && Root(owner, read) is { } buffer && live.TryGetValue(buffer, out long size) && lastUse.GetValueOrDefault(buffer, i) <= i)
                {
                    live.Remove(buffer);
                    arena.Free(buffer);
                    current -= size;
                }
            }
        }

        return new GraphMemoryProfile(frozen, trainableBytes, folded, peak, peakNode, flops, arena.Touched);
    }

    /// <summary>
    /// The order ONNX Runtime's sequential executor runs the nodes in (its default, GraphViewer's topological order): a
    /// depth-first walk from the nodes nothing reads, the highest node index first, among a node's inputs too (ORT sorts
    /// them by index and pushes them on its stack), each node emitted after its inputs. Node indices are the file's node
    /// order.
    /// </summary>
    private static List<Node> ExecutionOrder(Onnx.Lora.Ir.Graph graph)
    {
        var index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < graph.Nodes.Count; i++)
        {
            index[graph.Nodes[i]] = i;
        }

        // The leaves, lowest index first (the last pushed is taken first). ORT removes an Identity that names a graph
        // output and lets its producer write the output, so that producer is the leaf, at its own index.
        var stack = new Stack<(Node Node, bool Leave)>();
        foreach (Node node in graph.Nodes.Where(n => n.Outputs.All(o => o.Uses.Count == 0))
                     .Select(n => n.Outputs.All(o => o.IsGraphOutput) && GradientOutputOrder.ExclusiveProducer(n) is { } p ? p : n)
                     .Distinct().OrderBy(n => index[n]))
        {
            stack.Push((node, false));
        }

        var visited = new HashSet<Node>(ReferenceEqualityComparer.Instance);
        var order = new List<Node>(graph.Nodes.Count);
        while (stack.TryPop(out (Node Node, bool Leave) entry))
        {
            if (entry.Leave)
            {
                order.Add(entry.Node);
                continue;
            }

            if (!visited.Add(entry.Node))
            {
                continue;
            }

            stack.Push((entry.Node, true));
            foreach (Node producer in entry.Node.Inputs.Concat(entry.Node.ImplicitInputs())
                         .Select(v => v?.Producer).OfType<Node>().Where(index.ContainsKey).Distinct().OrderBy(n => index[n]))
            {
                stack.Push((producer, false));
            }
        }

        return order;
    }

    private static Value? Root(Dictionary<Value, Value> owner, Value v) => owner.TryGetValue(v, out Value? r) ? r : v;

    // A view keeps its buffer alive until the view's own last reader.
    private static void Extend(Dictionary<Value, int> lastUse, Value buffer, Value view)
    {
        int until = view.IsGraphOutput ? int.MaxValue : lastUse.GetValueOrDefault(view, -1);
        if (until > lastUse.GetValueOrDefault(buffer, -1))
        {
            lastUse[buffer] = until;
        }
    }

    /// <summary>Symbol → size: the first two axes of the batch inputs (input_ids, attention_mask, labels) are batch and sequence.</summary>
    private static Dictionary<string, long> BindSymbols(Onnx.Lora.Ir.Graph graph, int batch, int seq)
    {
        var symbols = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (Value input in graph.Inputs.Where(i => i.Initializer is null && i.Shape is { Count: >= 2 }))
        {
            Dim[] dims = [.. input.Shape!];
            if (dims[0].Param is { } b)
            {
                symbols.TryAdd(b, batch);
            }

            if (dims[1].Param is { } s)
            {
                symbols.TryAdd(s, seq);
            }
        }

        // The fused head's row chunks (LinearCrossEntropy): a causal LM scores every position, batch · seq rows.
        symbols[Artifacts.LinearCrossEntropy.ChunkRowsSymbol] = (((long)batch * seq) + Artifacts.LinearCrossEntropy.Chunks - 1) / Artifacts.LinearCrossEntropy.Chunks;
        return symbols;
    }

    private static long[]? Bound(Dim[]? dims, Dictionary<string, long> symbols)
    {
        if (dims is null)
        {
            return null;
        }

        var result = new long[dims.Length];
        for (int i = 0; i < dims.Length; i++)
        {
            long? v = dims[i].Value ?? (dims[i].Param is { } p && symbols.TryGetValue(p, out long s) ? s : null);
            if (v is null)
            {
                return null;
            }

            result[i] = v.Value;
        }

        return result;
    }

    private static long? Bytes(long[]? shape, DataType type) =>
        shape is null ? null : (type == DataType.Undefined ? DataType.Float : type).ByteCount(shape.Aggregate(1L, (a, d) => a * d));

    /// <summary>A value of unknown shape is taken as large as the largest input of its node (elementwise and gradient ops).</summary>
    private static long Fallback(Node node, ValueFacts facts, Dictionary<string, long> symbols) =>
        node.Inputs.OfType<Value>().Select(v => Bytes(Bound(facts.ShapeOf(v), symbols), facts.TypeOf(v)) ?? 0).DefaultIfEmpty(0).Max();

    /// <summary>2·M·N·K of a matrix product (batched: times the batch), 0 for other nodes or unknown shapes.</summary>
    private static double MatMulFlops(Node node, ValueFacts facts, Dictionary<string, long> symbols)
    {
        if (!(node.OpType is "MatMul" or "FusedMatMul" or "Gemm") || node.Inputs.Count < 2 || node.Inputs[0] is not { } a || node.Inputs[1] is not { } b)
        {
            return 0;
        }

        long[]? sa = Bound(facts.ShapeOf(a), symbols);
        long[]? so = Bound(facts.ShapeOf(node.Outputs[0]), symbols);
        if (sa is null || so is null || sa.Length == 0 || so.Length == 0)
        {
            return 0;
        }

        bool transA = node.GetInt("transA", 0) != 0;
        long k = sa.Length == 1 ? sa[0] : transA ? sa[^2] : sa[^1];
        double outputs = so.Aggregate(1.0, (acc, d) => acc * d);
        return 2.0 * outputs * k;
    }
}
