using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Artifacts;

/// <summary>
/// The language-model head and its cross-entropy as one op, computed in row chunks so that no [N, V] buffer is ever
/// held: per chunk the scores h_c · W, their log-sum-exp, the label's score, and (for training) the gradient the loss
/// sends to the hidden states, (softmax − onehot) · Wᵀ, all in the forward pass. The backward only scales that
/// gradient by the loss's incoming gradient.
/// </summary>
/// <remarks>
/// <para>Without it the training graph kept the whole [N, V] scores from the forward to the backward and the backward
/// made its softmax, softmax − onehot and scaled copies of it beside them: two to three [N, V] float buffers at the
/// peak (ONNX Runtime's CPU element-wise kernels never write in place), 192 MiB each at 1024 tokens × 49,152.
/// With it the largest loss buffers are two [N / chunks, V] ones. No work is added: the scores' gradient times Wᵀ is
/// the head's input gradient the backward computed anyway.</para>
/// <para><see cref="Fuse"/> runs before the backward is built and replaces SoftmaxCrossEntropyLoss(Reshape(MatMul(h,
/// W))) by <see cref="OpType"/>(h rows, W, labels) → (Σ loss, ∂Σ loss / ∂h rows) when the heads marked it
/// (<see cref="CrossEntropyLowering.Mark"/>: float scores, reduction sum), W is frozen (no trainable tensor or graph
/// input upstream: a LoRA-adapted head keeps the plain lowering), and nothing else reads the logits. Its gradient rule
/// is dh = output 1 · d loss. <see cref="Lower"/> runs after the backward is built and expands it into standard ops.</para>
/// </remarks>
public static class LinearCrossEntropy
{
    /// <summary>Domain of the fused op (never reaches ONNX Runtime: <see cref="Lower"/> expands it).</summary>
    public const string Domain = "onnx_lora.training";

    /// <summary>Op type of the fused op.</summary>
    public const string OpType = "LinearCrossEntropy";

    /// <summary>Row chunks the scores are computed in.</summary>
    public const int Chunks = 8;

    /// <summary>
    /// Node metadata key on the Slices that cut the row chunks. The shape facts then give their rows
    /// <see cref="ChunkRowsSymbol"/>, which the training memory walk binds to ⌈rows / chunks⌉. (Not a value-info shape:
    /// ONNX Runtime plans buffer reuse by symbolic dims, and the last chunks are shorter.)
    /// </summary>
    public const string ChunkRowsKey = "onnx_lora.chunk_rows";

    /// <summary>The symbolic dim the shape facts give a chunk's rows.</summary>
    public const string ChunkRowsSymbol = "onnx_lora_chunk_rows";

    /// <summary>Replaces every fusable marked cross-entropy of <paramref name="model"/> by the fused op.</summary>
    /// <param name="model">A model holding the loss heads.</param>
    /// <param name="trainable">Trainable initializer names (a head weight computed from one of them is not fused).</param>
    /// <returns>How many losses were fused.</returns>
    public static int Fuse(Model model, IReadOnlyCollection<string> trainable)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(trainable);
        Onnx.Lora.Ir.Graph graph = model.Graph;
        var frozen = new Dictionary<Value, bool>(ReferenceEqualityComparer.Instance);
        int fused = 0;
        foreach (Node loss in graph.Nodes.Where(CrossEntropyLowering.IsMarkedFloat).ToArray())
        {
            if (Head(loss) is not { } head || !IsFrozen(head.Weight, trainable, frozen))
            {
                continue;
            }

            var b = new GraphBuilder(model) { InsertionPoint = loss, NamePrefix = "linear_cross_entropy/" };
            Value width = b.Op("Slice", [b.Op("Shape", [head.Weight]), b.Int64s("width_start", 0), b.Int64s("width_end", 1)]);
            Value rows = b.Op("Reshape", [head.Hidden, b.Op("Concat", [b.Int64s("all_rows", -1), width], [Attr.Int("axis", 0)])]);
            List<Attr> attributes = [Attr.Int("chunks", Chunks)];
            if (loss.GetAttribute("ignore_index")?.AsInt() is { } ignore)
            {
                attributes.Add(Attr.Int("ignore_index", ignore));
            }

            // The heads read the vocabulary size from the logits' shape: computed from h and W, no logits are made for it.
            Node[] shapeReads = [.. head.Logits.Uses.Select(u => u.Node).Where(n => n.Is("Shape"))];
            if (shapeReads.Length > 0)
            {
                var before = new GraphBuilder(model) { InsertionPoint = head.Logits.Producer, NamePrefix = b.NamePrefix };
                Value leading = before.Op("Slice", [before.Op("Shape", [head.Hidden]), before.Int64s("leading_start", 0), before.Int64s("leading_end", -1)]);
                Value vocab = before.Op("Slice", [before.Op("Shape", [head.Weight]), before.Int64s("vocab_start", 1), before.Int64s("vocab_end", 2)]);
                Value logitsShape = before.Op("Concat", [leading, vocab], [Attr.Int("axis", 0)]);
                foreach (Node read in shapeReads)
                {
                    read.Outputs[0].ReplaceAllUsesWith(logitsShape);
                    graph.Remove(read);
                }
            }

            IReadOnlyList<Value> outputs = b.OpMulti(OpType, [rows, head.Weight, loss.Inputs[1]], 2, [.. attributes], Domain);
            loss.Outputs[0].ReplaceAllUsesWith(outputs[0]);
            graph.Remove(loss);
            fused++;
        }

        return fused;
    }

    /// <summary>Expands every fused op of <paramref name="model"/> into standard ops (the gradient only where something reads it).</summary>
    /// <returns>How many were expanded.</returns>
    public static int Lower(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Node[] nodes = [.. model.Graph.Nodes.Where(n => n.Domain == Domain && n.OpType == OpType)];
        foreach (Node node in nodes)
        {
            new ChunkedLoss(model, node).Expand();
        }

        return nodes.Length;
    }

    /// <summary>The head of a marked loss: scores = Reshape(MatMul(hidden, weight)) read by nothing else, weight 2-D.</summary>
    private static (Value Hidden, Value Weight, Value Logits)? Head(Node loss)
    {
        if (loss.Inputs.Count != 2 || (loss.GetAttribute("reduction")?.AsString() ?? "mean") != "sum"
            || loss.Inputs[0] is not { Producer: { } reshape } scores || !reshape.Is("Reshape") || scores.Uses.Count != 1 || scores.IsGraphOutput
            || reshape.Inputs[0] is not { Producer: { } matMul } logits || !matMul.Is("MatMul")
            || logits.Uses.Any(u => u.Node != reshape && !(u.Node.Is("Shape") && u.Node.Attributes.Count == 0))
            || matMul.Inputs[0] is not { } hidden || matMul.Inputs[1] is not { } weight || Rank(weight) != 2)
        {
            return null;
        }

        return (hidden, weight, logits);
    }

    private static int? Rank(Value v) =>
        v.IsInitializer ? v.Initializer!.Dims.Count
        : v.Producer is { } p && p.Is("Transpose") && p.Inputs[0] is { IsInitializer: true } t ? t.Initializer!.Dims.Count
        : null;

    /// <summary>True when no trainable tensor and no graph input is upstream of <paramref name="value"/>.</summary>
    private static bool IsFrozen(Value value, IReadOnlyCollection<string> trainable, Dictionary<Value, bool> memo)
    {
        if (memo.TryGetValue(value, out bool known))
        {
            return known;
        }

        bool result = value.IsInitializer
            ? !trainable.Contains(value.Name) && !value.IsGraphInput
            : value.Producer is { } p && p.Inputs.All(i => i is null || IsFrozen(i, trainable, memo));
        memo[value] = result;
        return result;
    }

    /// <summary>The expansion of one fused node.</summary>
    private sealed class ChunkedLoss(Model model, Node node)
    {
        private readonly GraphBuilder _b = new(model) { InsertionPoint = node, NamePrefix = "linear_cross_entropy/" };
        private readonly long _opset = model.DefaultOpset;

        public void Expand()
        {
            Value hidden = node.Inputs[0]!, weight = node.Inputs[1]!, labels = node.Inputs[2]!;
            Value gradientOutput = node.Outputs[1];
            bool gradient = gradientOutput.Uses.Count > 0 || gradientOutput.IsGraphOutput;
            long chunks = node.GetInt("chunks", Chunks);
            Value axis0 = _b.Int64s("axis_zero", 0);
            Value axis1 = _b.Int64s("axis_one", 1);
            Value rowCount = _b.Op("Slice", [_b.Op("Shape", [hidden]), _b.Int64s("rows_start", 0), _b.Int64s("rows_end", 1)]);
            Value size = _b.Op("Div", [_b.Op("Add", [rowCount, _b.Int64s("round_up", chunks - 1)]), _b.Int64s("chunk_count", chunks)]);
            Value? ignore = node.GetAttribute("ignore_index")?.AsInt() is { } ig ? _b.Initializer(InMemoryTensor.FromInt64s("ignore_index", [], [ig])) : null;
            Value zeroId = _b.Initializer(InMemoryTensor.FromInt64s("zero_id", [], [0]));
            Value zero = _b.Scalar("zero", 0f);
            Value one = _b.Scalar("one", 1f);

            Value? sum = null;
            var gradients = new List<Value>();
            for (long c = 0; c < chunks; c++)
            {
                // Slice clamps the last chunks' ends to the row count; a chunk past it is empty and adds 0.
                Value start = _b.Op("Mul", [size, _b.Int64s($"chunk_{c}", c)]);
                Value end = _b.Op("Add", [start, size]);
                Value h = _b.Op("Slice", [hidden, start, end, axis0]);
                Value label = _b.Op("Slice", [labels, start, end, axis0]);
                h.Producer!.MetadataProps.Add(KeyValuePair.Create(ChunkRowsKey, c.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                label.Producer!.MetadataProps.Add(KeyValuePair.Create(ChunkRowsKey, c.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                Value scores = _b.Op("MatMul", [h, weight]);
                CrossEntropyTerms terms = CrossEntropyLowering.SumOverRows(_b, scores, label, ignore, zeroId, zero, axis1, _opset);
                Value chunkLoss = terms.Sum;
                if (gradient)
                {
                    Value dHidden = Gradient(scores, weight, terms, one);
                    gradients.Add(dHidden);

                    // The chunk's loss waits for its gradient (Where(c, x, x) is x), so ONNX Runtime's depth-first order
                    // finishes one chunk, scores to gradient, before it starts the next.
                    Value done = _b.Op("Cast", [_b.Op("Size", [dHidden])], [Attr.Int("to", (long)DataType.Bool)]);
                    chunkLoss = _b.Op("Where", [done, chunkLoss, chunkLoss]);
                }

                sum = sum is null ? chunkLoss : _b.Op("Add", [sum, chunkLoss]);
            }

            node.Outputs[0].ReplaceAllUsesWith(sum!);
            if (gradient)
            {
                gradientOutput.ReplaceAllUsesWith(_b.Op("Concat", [.. gradients], [Attr.Int("axis", 0)]), replaceGraphOutputs: true);
            }

            model.Graph.Remove(node);
        }

        /// <summary>∂ Σ loss / ∂ h of one chunk: (softmax − onehot) · Wᵀ, ignored rows zero.</summary>
        private Value Gradient(Value scores, Value weight, CrossEntropyTerms terms, Value one)
        {
            Value softmax = _b.Op("Exp", [_b.Op("Sub", [scores, terms.LogSumExp])]);

            // p[label] − 1 from the label's score (the same exp of the same difference as the entry it replaces).
            Value atLabel = _b.Op("Sub", [_b.Op("Exp", [_b.Op("Sub", [terms.Picked, terms.LogSumExp])]), one]);
            Value dScores = _b.Op("ScatterElements", [softmax, terms.At, atLabel], [Attr.Int("axis", 1)]);
            if (terms.Ignored is { } ignored)
            {
                dScores = _b.Op("Mul", [dScores, _b.Op("Cast", [_b.Op("Not", [ignored])], [Attr.Int("to", (long)DataType.Float)])]);
            }

            return _b.Op("Gemm", [dScores, weight], [Attr.Int("transB", 1)]);
        }
    }
}
