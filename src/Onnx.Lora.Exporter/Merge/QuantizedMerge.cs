// Merging into an int4 MatMulNBits base (com.microsoft; W[K, N] stored per output column in blocks along K):
//   W_f = dequant(B, scales, zero_points)          (zero point 8 when the node has none)
//   W'  = W_f + s·A·B_lora                          (float32)
//   Requantize: B', scales', zp' = quant(W') with the SAME block size, asymmetric with zero points when the base had
//               them, symmetric (implicit zero point 8) when it had none, so the node and its inputs keep their shapes.
//               The error |W' − dequant(B', scales', zp')| is at most half a quantization step per element (the
//               step is the block's scale) and is reported per module from the bytes actually stored.
//   FloatCopy:  the MatMulNBits node is REPLACED by MatMul(x, W') (+ Add(bias)): exact, but the graph changes (an
//               fp32/fp16 weight 4–8× larger than the int4 one, and a different kernel) — only when asked.
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Ir.Quantization;
using Onnx.Lora.Formats;

namespace Onnx.Lora.Exporter.Merge;

/// <summary>What a merge does with MatMulNBits (int4) bases.</summary>
public enum QuantizedMergeMode
{
    /// <summary>Dequantize, merge, re-quantize with the same block size (and zero points if present): the graph stays the base graph.</summary>
    Requantize,

    /// <summary>Replace the MatMulNBits node by a float MatMul on the merged weight: exact, but the graph changes.</summary>
    FloatCopy,
}

/// <summary>Options of a merge.</summary>
public sealed record MergeOptions
{
    /// <summary>What to do with MatMulNBits bases.</summary>
    public QuantizedMergeMode Quantized { get; init; } = QuantizedMergeMode.Requantize;

    /// <summary>Told as the merged model is written (merged weights are computed while they stream out).</summary>
    public IProgress<SaveProgress>? Progress { get; init; }

    /// <summary>
    /// Keep merged weights that the base stored as Constant nodes as initializers instead of Constant nodes again
    /// (false: the merged model stores every weight where the base stored it).
    /// </summary>
    public bool ConstantsAsInitializers { get; init; }

    /// <summary>Stops the merge between tensors (Ctrl-C, SIGTERM); nothing is left at the output.</summary>
    public CancellationToken CancellationToken { get; init; }
}

/// <summary>The re-quantization error of one module, measured from the stored bytes against the float merged weight.</summary>
/// <param name="Module">Module name.</param>
/// <param name="MaxAbs">max |W' − dequant(requant(W'))|.</param>
/// <param name="MaxRel">MaxAbs / max |W'|.</param>
/// <param name="MaxStep">The largest block scale (quantization step) of the re-quantized weight; MaxAbs ≤ MaxStep / 2.</param>
public sealed record QuantizationError(string Module, double MaxAbs, double MaxRel, double MaxStep);

/// <summary>Merging into MatMulNBits bases.</summary>
internal static class QuantizedMerge
{
    public static void Requantize(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, LoraModuleWeights w, string source, List<QuantizationError> errors)
    {
        QuantizedBase q = QuantizedBase.Read(graph, info, source);
        var once = new ComputeOnce<(byte[] Packed, byte[] Scales, byte[]? ZeroPoints)>(partCount: q.ZeroPoints is null ? 2 : 3, () =>
        {
            float[] merged = q.MergedFloat(w, info, source);
            MatMulNBitsWeights r = q.ZeroPoints is null
                ? MatMulNBitsCodec.QuantizeSymmetric(merged, q.K, q.N, q.BlockSize)
                : MatMulNBitsCodec.Quantize(merged, q.K, q.N, q.BlockSize);
            byte[] scales = TensorConvert.FromFloat32(r.Scales, q.Scales.DataType);

            // Measure from what is stored (scales possibly rounded to fp16).
            float[] storedScales = new float[r.Scales.Length];
            TensorConvert.ToFloat32(scales, q.Scales.DataType, storedScales);
            float[] back = new float[merged.Length];
            MatMulNBitsCodec.Dequantize(r.Packed, storedScales, q.ZeroPoints is null ? [] : r.ZeroPoints, q.K, q.N, q.BlockSize, back);
            double maxAbs = 0, maxW = 0;
            for (int i = 0; i < merged.Length; i++)
            {
                maxAbs = Math.Max(maxAbs, Math.Abs((double)merged[i] - back[i]));
                maxW = Math.Max(maxW, Math.Abs((double)merged[i]));
            }

            lock (errors)
            {
                errors.RemoveAll(e => e.Module == info.Module); // A tensor written twice recomputes; report it once.
                errors.Add(new QuantizationError(info.Module, maxAbs, maxW == 0 ? 0 : maxAbs / maxW, storedScales.Max()));
            }

            return (r.Packed, scales, q.ZeroPoints is null ? null : r.ZeroPoints);
        });

        graph.Initializers.SetData(q.Packed.Name, new DeferredTensor(q.Packed.Name, q.Packed.DataType, q.Packed.Dims, () => once.Take().Packed));
        graph.Initializers.SetData(q.Scales.Name, new DeferredTensor(q.Scales.Name, q.Scales.DataType, q.Scales.Dims, () => once.Take().Scales));
        if (q.ZeroPoints is { } zp)
        {
            graph.Initializers.SetData(zp.Name, new DeferredTensor(zp.Name, zp.DataType, zp.Dims, () => once.Take().ZeroPoints!));
        }
    }

    /// <summary>Replaces the target MatMulNBits node by MatMul(x, W') (+ Add(bias)); call after the LoRA branch is removed.</summary>
    public static void ReplaceWithFloatMatMul(Model model, LoraModuleInfo info, LoraModuleWeights w, string source)
    {
        Onnx.Lora.Ir.Graph graph = model.Graph;
        QuantizedBase q = QuantizedBase.Read(graph, info, source);
        Node node = q.Node;
        DataType type = q.Scales.DataType;
        HashSet<string> used = graph.UsedNames();
        string weightName = info.Module + ".weight";
        for (int i = 1; used.Contains(weightName); i++)
        {
            weightName = $"{info.Module}.weight_{i}";
        }

        Value weight = graph.AddInitializer(new DeferredTensor(weightName, type, [q.K, q.N], () =>
            TensorConvert.FromFloat32(q.MergedFloat(w, info, source), type)));
        var b = new GraphBuilder(model) { InsertionPoint = node };
        Value y = b.MatMul(node.Inputs[0]!, weight, name: node.Name + "/float");
        Node matMul = y.Producer!;
        if (node.Inputs.Count > 5 && node.Inputs[5] is { } bias)
        {
            y = b.Add(y, bias, name: node.Name + "/bias");
        }

        Value old = node.Outputs[0];
        string outputName = old.Name;
        y.Type = old.Type;
        old.ReplaceAllUsesWith(y, replaceGraphOutputs: true);
        old.Name = outputName + "_nbits_removed";
        y.Name = outputName;
        string nodeName = node.Name;
        graph.Remove(node, safe: true);
        matMul.Name = nodeName; // Keeps the name the module was found by (a re-injection finds the same module).
        foreach (Tensor t in new[] { q.Packed, q.Scales, q.ZeroPoints }.OfType<Tensor>())
        {
            if (graph.Initializers.TryGetValue(t.Name, out Value? v) && v.Uses.Count == 0 && !v.IsGraphInput)
            {
                graph.Initializers.Remove(t.Name);
            }
        }
    }

    /// <summary>The quantized weight of one module, checked against the manifest and the node.</summary>
    private sealed record QuantizedBase(Node Node, Tensor Packed, Tensor Scales, Tensor? ZeroPoints, int K, int N, int BlockSize)
    {
        public static QuantizedBase Read(Onnx.Lora.Ir.Graph graph, LoraModuleInfo info, string source)
        {
            Node node = graph.Nodes.FirstOrDefault(n => n.Name == info.TargetNode)
                ?? throw new AdapterMismatchException($"Model '{source}' has no node '{info.TargetNode}' (target of module '{info.Module}').");
            if (!node.Is("MatMulNBits", "com.microsoft"))
            {
                throw new AdapterMismatchException($"Module '{info.Module}' of '{source}' has layout MatMulNBits but its target '{node.Name}' is {node.OpType}.");
            }

            int bits = (int)node.GetInt("bits", 4);
            if (bits != MatMulNBitsWeights.Bits)
            {
                throw new AdapterMismatchException($"MatMulNBits node '{node.Name}' ({info.Module}) has {bits}-bit weights; only {MatMulNBitsWeights.Bits}-bit can be re-quantized.");
            }

            if (node.Inputs.Count > 4 && node.Inputs[4] is { } gIdx)
            {
                throw new AdapterMismatchException($"MatMulNBits node '{node.Name}' ({info.Module}) has a g_idx input '{gIdx.Name}' (act-order); merging into it is not supported.");
            }

            int blockSize = info.BlockSize ?? (int)node.GetInt("block_size", 0);
            Tensor packed = Get(graph, info.BaseWeight, info, source);
            string scalesName = info.Scales ?? node.Inputs[2]?.Name ?? throw new AdapterMismatchException($"MatMulNBits node '{node.Name}' has no scales.");
            string? zpName = info.ZeroPoints ?? (node.Inputs.Count > 3 ? node.Inputs[3]?.Name : null);
            Tensor scales = Get(graph, scalesName, info, source);
            Tensor? zp = zpName is null ? null : Get(graph, zpName, info, source);
            if (zp is not null && zp.DataType != DataType.UInt8)
            {
                throw new AdapterMismatchException($"Zero points '{zp.Name}' of '{node.Name}' are {zp.DataType.ShortName()}; only packed uint8 zero points are supported.");
            }

            int blocks = (int)((info.InFeatures + blockSize - 1) / Math.Max(1, blockSize));
            if (blockSize < 16 || packed.ElementCount != info.OutFeatures * blocks * (blockSize / 2) || scales.ElementCount != info.OutFeatures * blocks)
            {
                throw new AdapterMismatchException($"MatMulNBits weight '{packed.Name}' [{string.Join(",", packed.Dims)}] with scales [{string.Join(",", scales.Dims)}] does not fit K={info.InFeatures}, N={info.OutFeatures}, block_size={blockSize} ({info.Module}).");
            }

            return new QuantizedBase(node, packed, scales, zp, (int)info.InFeatures, (int)info.OutFeatures, blockSize);
        }

        /// <summary>dequant(W) + s·A·B as float32 [K, N], checked finite.</summary>
        public float[] MergedFloat(LoraModuleWeights w, LoraModuleInfo info, string source)
        {
            if (w.Magnitude is not null)
            {
                throw new AdapterMismatchException($"Module '{info.Module}' uses DoRA on a MatMulNBits base; not supported.");
            }

            float[] merged = new float[K * N];
            MatMulNBitsCodec.Dequantize(Packed.GetBytes().Span, Scales.ToFloat32(), ZeroPoints is null ? [] : ZeroPoints.GetBytes().Span, K, N, BlockSize, merged);
            LoraMath.AddDelta(merged, WeightLayout.InOut, K, N, w.A, w.B, w.Rank, w.Scale);
            foreach (float v in merged)
            {
                if (!float.IsFinite(v))
                {
                    // Failure path only: dequantize again to tell a broken base (NaN/Inf scales) from a broken adapter.
                    MatMulNBitsCodec.Dequantize(Packed.GetBytes().Span, Scales.ToFloat32(), ZeroPoints is null ? [] : ZeroPoints.GetBytes().Span, K, N, BlockSize, merged);
                    throw LoraMerger.NonFinite(info, w, merged.All(float.IsFinite), source);
                }
            }

            return merged;
        }

        private static Tensor Get(Onnx.Lora.Ir.Graph graph, string name, LoraModuleInfo info, string source) =>
            graph.Initializers.TryGetValue(name, out Value? v) && v.Initializer is { } t
                ? t
                : throw new AdapterMismatchException($"Model '{source}' has no initializer '{name}' for MatMulNBits module '{info.Module}'.");
    }

    /// <summary>
    /// Computes a value once for several deferred tensors and forgets it after each part was taken once, so only one
    /// module's re-quantized bytes are alive while the writer streams the model.
    /// </summary>
    private sealed class ComputeOnce<T>(int partCount, Func<T> compute)
    {
        private readonly object _gate = new();
        private T? _value;
        private bool _has;
        private int _taken;

        public T Take()
        {
            lock (_gate)
            {
                if (!_has)
                {
                    _value = compute();
                    _has = true;
                    _taken = 0;
                }

                T value = _value!;
                if (++_taken == partCount)
                {
                    _value = default;
                    _has = false;
                }

                return value;
            }
        }
    }
}
