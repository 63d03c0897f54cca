// InsertLoraAdaptersPass — adds a LoRA branch to every selected linear layer y = x·W (+ bias):
//
//   LoRA:  y' = y + ((dropout(x)·A)·s)·B              A: [in, r], B: [r, out], s = α/r (rsLoRA: α/√r)
//   DoRA:  y' = y + (m/‖W + s·A·B‖ − 1) · dropout(x)·W + (m/‖W + s·A·B‖) · s · dropout(x)·A·B
//          = (m/‖·‖)·(x·W + s·x·A·B) + bias without dropout       ‖·‖: column norm over "in", detached
//   fused Attention (com.microsoft): the weight input becomes W + s·A·B (the projection happens inside the op).
//
// B starts at zero, so a freshly inserted adapter changes nothing. With the Initializers placement A, B (and DoRA's
// magnitude m, float32) are initializers and s is a Mul by a scalar initializer on the rank-r intermediate x·A;
// with AdapterSlots A and B are graph inputs with a symbolic rank dim per module (<module>.lora_rank) and r = 0
// initializer defaults, and s is folded into B by whoever writes the adapter, as ORT/Olive adapters expect. The
// branch runs in the activation dtype: fp16/bf16 bases Cast A and B.
// Every node and initializer a branch adds is tagged with its module, and the node whose output takes over the base
// value's uses names that value (LoraTags): merge and the serving export remove exactly what was tagged.
// NOTE: no weight bytes are read unless DoRA (magnitude init) or PiSSA (SVD) needs them.
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Passes;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Injection;

using Graph = Onnx.Lora.Ir.Graph;

/// <summary>Inserts LoRA adapters into the layers <see cref="LoraOptions"/> selects and writes the <see cref="LoraManifest"/>.</summary>
public sealed class InsertLoraAdaptersPass : InPlacePass
{
    private readonly LoraOptions _options;

    /// <summary>Creates the pass.</summary>
    /// <exception cref="LoraOptionsException">The options are invalid.</exception>
    public InsertLoraAdaptersPass(LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
    }

    /// <summary>The layers the pass would adapt in <paramref name="model"/>, without changing it (a dry run).</summary>
    /// <exception cref="LoraOptionsException">The selection is empty or names modules that do not exist.</exception>
    public IReadOnlyList<SelectedTarget> Plan(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return TargetSelector.Select(TargetDiscovery.FindAll(model), _options);
    }

    /// <inheritdoc />
    protected override void Requires(Model model)
    {
        if (LoraManifest.Read(model) is not null)
        {
            throw new PassException($"The model already has LoRA adapters (metadata '{LoraManifest.MetadataKey}'); merge or strip them before injecting again.");
        }
    }

    /// <inheritdoc />
    protected override PassResult Call(Model model)
    {
        IReadOnlyList<SelectedTarget> selected = Plan(model);
        foreach (SelectedTarget s in selected)
        {
            if (_options.UseDora && s.Target.OpKind is LinearOpKind.Attention)
            {
                throw new PassException($"DoRA cannot adapt '{s.Target.Module}': its projection is fused into {s.Target.Node.OpType} '{s.Target.Node.Name}'. Exclude it or use plain LoRA.");
            }

            if (_options.UseDora && !s.Target.IsLinear)
            {
                throw new PassException($"DoRA cannot adapt '{s.Target.Module}' ({s.Target.OpKind}): DoRA is supported on linear layers only. Exclude it or use plain LoRA.");
            }

            if (_options.UseDora && s.Target.OpKind is LinearOpKind.MatMulNBits)
            {
                throw new PassException($"DoRA cannot adapt '{s.Target.Module}': the magnitude needs the column norms of its int4 weight, which is not supported yet. Exclude it or use plain LoRA.");
            }
        }

        if (_options.TrainingGraph && _options.Dropout > 0 && model.DefaultOpset < 12)
        {
            throw new PassException($"Dropout in a training graph needs opset ≥ 12 (training_mode input); the model imports opset {model.DefaultOpset}.");
        }

        // Constant-node weights become initializers first, so that training, merge and export find every adapted W
        // where they look for it; the manifest remembers them and merge stores them as Constant nodes again.
        HashSet<string> lifted = LiftConstantWeights(model.Graph, selected);
        if (lifted.Count > 0)
        {
            selected = Plan(model);
        }

        var builder = new GraphBuilder(model);
        var modules = new List<LoraModuleInfo>(selected.Count);
        foreach (SelectedTarget s in selected)
        {
            modules.Add(new BranchBuilder(builder, _options, s, lifted.Contains(s.Target.Weight.Name)).Build());
        }

        model.Graph.SortTopologically();
        new LoraManifest
        {
            Placement = _options.Placement,
            Dropout = _options.Dropout,
            UseDora = _options.UseDora,
            Pissa = _options.Init == LoraInit.Pissa,
            Modules = modules,
            Config = _options.ToConfig(),
        }.Write(model);
        return new PassResult(model, modules.Count > 0);
    }

    private static HashSet<string> LiftConstantWeights(Graph graph, IReadOnlyList<SelectedTarget> selected)
    {
        var lifted = new HashSet<string>(StringComparer.Ordinal);
        foreach (SelectedTarget s in selected)
        {
            if (s.Target.WeightIsConstantNode && ReferenceEquals(s.Target.Weight.Producer!.Graph, graph) && lifted.Add(s.Target.Weight.Name))
            {
                ConstantWeights.Lift(graph, s.Target.Weight);
            }
        }

        return lifted;
    }

    /// <summary>Builds one module's branch.</summary>
    private sealed class BranchBuilder(GraphBuilder b, LoraOptions options, SelectedTarget selected, bool liftedConstant)
    {
        private readonly LinearTarget _t = selected.Target;
        private readonly DataType _act = selected.Target.ActivationType;
        private readonly double _scaling = options.ScalingFor(selected.Rank, selected.Alpha);

        private Graph Graph => b.Graph;

        private bool Slots => options.Placement == LoraPlacement.AdapterSlots;

        public LoraModuleInfo Build()
        {
            string module = _t.Module;
            if (_t.Node.Name.Length == 0)
            {
                // The manifest identifies the target node by name.
                _t.Node.Name = b.FreshName("/" + module.Replace('.', '/') + "/" + _t.Node.OpType);
            }

            string prefix = b.NamePrefix;
            b.NamePrefix = "/" + module.Replace('.', '/') + "/lora/";
            LoraTags.AddedSince added = LoraTags.Snapshot(Graph);
            try
            {
                string aName = module + ".lora_A.weight";
                string bName = module + ".lora_B.weight";
                (float[] a, float[] bInit, float[]? residual) = InitialValues();
                Value aValue = Parameter(aName, [_t.InFeatures, selected.Rank], rankAxis: 1, a);
                Value bValue = Parameter(bName, [selected.Rank, _t.OutFeatures], rankAxis: 0, bInit);
                if (residual is not null)
                {
                    Graph.Initializers.SetData(_t.Weight.Name, BaseWeightReader.ToStored(_t, residual));
                }

                Value aAct = ToActivationType(aValue);
                Value bAct = ToActivationType(bValue);
                Value? scale = Slots ? null : b.Initializer(ScalarTensor(module + ".lora_scale", _scaling));
                string? magnitude = null;

                if (_t.OpKind == LinearOpKind.Attention)
                {
                    // Fused qkv inside the attention op: adapt the weight it reads, W' = W + s·A·B.
                    Value delta = b.MatMul(aAct, bAct);
                    delta = scale is null ? delta : b.Mul(delta, scale);
                    int index = _t.Node.Inputs.ToList().IndexOf(_t.WeightInput);
                    Value adapted = b.Add(_t.WeightInput, delta);
                    _t.Node.ReplaceInput(index, adapted);
                    LoraTags.MarkReplaces(adapted.Producer!, _t.WeightInput);
                }
                else
                {
                    Value y = _t.Node.Outputs[0];
                    Usage[] uses = y.Uses.ToArray();
                    // The node's input as it is NOW: an earlier branch may have rewired it (an adapted embedding feeding lm_head).
                    Value activation = _t.Node.Inputs[_t.OpKind == LinearOpKind.Embedding ? 1 : 0]!;
                    Value x = _t.TransposeActivation ? b.Transpose(activation, [1, 0]) : activation;
                    bool dropped = options.TrainingGraph && options.Dropout > 0 && _t.OpKind != LinearOpKind.Embedding;
                    Value xd = dropped ? Dropout(x) : x;
                    // The scale multiplies the rank-r intermediate, ((x·A)·s)·B, not the [.., out] result: the same
                    // math with r ≪ out elements to scale (the Mul on [batch, seq, out] was ~9% of training kernel time).
                    Value scaled = _t.OpKind switch
                    {
                        LinearOpKind.Conv => ShapedBranches.Conv(b, _t, xd, aAct, bAct, scale),
                        LinearOpKind.Embedding => ShapedBranches.Embedding(b, xd, aAct, bAct, scale),
                        _ => b.MatMul(scale is null ? b.MatMul(xd, aAct) : b.Mul(b.MatMul(xd, aAct), scale), bAct),
                    };
                    Value output;
                    if (options.UseDora)
                    {
                        magnitude = module + ".lora_magnitude_vector";
                        output = Dora(y, xd, !ReferenceEquals(xd, x), aAct, bAct, scale!, scaled, magnitude);
                    }
                    else
                    {
                        output = b.Add(y, scaled);
                    }

                    Rewire(y, uses, output);
                    LoraTags.MarkReplaces(output.Producer!, y);
                }

                added.TagAdded(module);

                return new LoraModuleInfo
                {
                    Module = module,
                    TargetNode = _t.Node.Name,
                    BaseWeight = _t.Weight.Name,
                    Layout = _t.Layout,
                    InFeatures = _t.InFeatures,
                    OutFeatures = _t.OutFeatures,
                    Rank = Slots ? 0 : selected.Rank,
                    Alpha = selected.Alpha,
                    UseRsLora = options.UseRsLora,
                    LoraA = aName,
                    LoraB = bName,
                    Magnitude = magnitude,
                    ScaleTensor = scale?.Name,
                    BlockSize = _t.BlockSize,
                    Scales = _t.Scales,
                    ZeroPoints = _t.ZeroPoints,
                    Bias = _t.Bias,
                    LayerIndex = _t.LayerIndex,
                    OpKind = _t.OpKind.ToString(),
                    Bits = _t.Bits,
                    RequestedRank = selected.Rank,
                    BaseWeightStorage = liftedConstant ? ConstantWeights.ConstantNode : null,
                    BaseWeightReshaped = _t.WeightReshaped ? true : null,
                    Kernel = _t.Kernel?.ToArray(),
                };
            }
            finally
            {
                b.NamePrefix = prefix;
            }
        }

        private (float[] A, float[] B, float[]? Residual) InitialValues()
        {
            int r = selected.Rank;
            if (Slots)
            {
                return ([], [], null);
            }

            if (options.Init == LoraInit.Pissa)
            {
                return PissaInitializer.Compute(_t, r, _scaling);
            }

            if (_t.OpKind == LinearOpKind.Embedding)
            {
                (float[] ea, float[] eb) = ShapedBranches.EmbeddingInit(_t, r, LoraInitializer.RandomFor(options.Seed, _t.Module));
                return (ea, eb, null);
            }

            var a = new float[checked((int)(_t.InFeatures * r))];
            LoraInitializer.FillA(options.Init, _t.InFeatures, r, LoraInitializer.RandomFor(options.Seed, _t.Module), a);
            return (a, new float[checked((int)(r * _t.OutFeatures))], null);
        }

        private Value Parameter(string name, long[] dims, int rankAxis, float[] values)
        {
            if (Graph.FindValue(name) is not null)
            {
                throw new PassException($"Cannot add LoRA tensor '{name}': the model already has a value of that name.");
            }

            if (!Slots)
            {
                return b.Initializer(InMemoryTensor.FromFloats(name, dims, values));
            }

            // An adapter slot: a graph input with a symbolic rank and an r = 0 default, so the model runs without an adapter.
            // Each module gets its own rank dim: ORT binds a dim_param to ONE size per run, so a shared name fails
            // ("Shape mismatch attempting to re-use buffer") on adapters whose modules have different ranks (rank_pattern).
            var rank = new Dim(_t.Module + "." + options.RankDimName);
            Dim[] shape = rankAxis == 0 ? [rank, new Dim(dims[1])] : [new Dim(dims[0]), rank];
            Value input = b.Input(name, DataType.Float, shape);
            long[] empty = rankAxis == 0 ? [0, dims[1]] : [dims[0], 0];
            Graph.Initializers.Add(input, InMemoryTensor.FromFloats(name, empty, []));
            return input;
        }

        private Value ToActivationType(Value v) => _act == DataType.Float ? v : b.Cast(v, _act);

        private InMemoryTensor ScalarTensor(string name, double value) =>
            new(name, _act, [], TensorConvert.FromFloat32([(float)value], _act));

        private Value Dropout(Value x)
        {
            Value ratio = b.Initializer(ScalarTensor(_t.Module + ".lora_dropout_ratio", options.Dropout));
            Value training = b.Initializer(InMemoryTensor.From<bool>(b.FreshName("training_mode"), DataType.Bool, [], [true]));
            // The mask output is what the trainer's Dropout gradient multiplies by: x needs a gradient whenever an earlier
            // layer is adapted too, so the branch must expose it.
            return b.OpMulti("Dropout", [x, ratio, training], 2, [Attr.Int("seed", options.Seed)])[0];
        }

        private Value Dora(Value y, Value xd, bool dropped, Value aAct, Value bAct, Value scale, Value scaled, string magnitudeName)
        {
            // ‖W + s·A·B‖ per output column, over the input axis, detached as PEFT detaches it.
            Value w = WeightInOut();
            Value combined = b.Add(w, b.Mul(b.MatMul(aAct, bAct), scale));
            Value norm = b.StopGradient(ReduceL2OverInputs(combined));

            float[] weight = BaseWeightReader.ReadInOut(_t, "DoRA");
            var m = new float[_t.OutFeatures];
            for (int i = 0; i < _t.InFeatures; i++)
            {
                for (int o = 0; o < m.Length; o++)
                {
                    float v = weight[i * m.Length + o];
                    m[o] += v * v;
                }
            }

            for (int o = 0; o < m.Length; o++)
            {
                m[o] = MathF.Sqrt(m[o]);
            }

            Value magnitude = b.Initializer(InMemoryTensor.FromFloats(magnitudeName, [m.Length], m));
            Value ratio = b.Div(ToActivationType(magnitude), norm);

            // PEFT: base(x) + (m/‖·‖ − 1)·F.linear(x, W) + (m/‖·‖)·s·x·A·B, with F.linear on dropout(x) while training.
            if (dropped)
            {
                Value one = b.Initializer(ScalarTensor(b.FreshName("one"), 1.0));
                return b.Add(y, b.Add(b.Mul(b.Sub(ratio, one), b.MatMul(xd, w)), b.Mul(ratio, scaled)));
            }

            // Without dropout F.linear(x, W) is the layer's own result less its bias, so the sum factors as
            // (m/‖·‖)·(y − bias + s·x·A·B) + bias.
            if (_t.BiasInNode && _t.Bias is not null)
            {
                Value bias = Graph.Initializers.TryGetValue(_t.Bias, out Value? stored) ? stored : _t.Node.Inputs[2]!;
                return b.Add(b.Mul(ratio, b.Add(b.Sub(y, bias), scaled)), bias);
            }

            return b.Mul(ratio, b.Add(y, scaled));
        }

        private Value WeightInOut()
        {
            bool transB = _t.OpKind == LinearOpKind.Gemm && _t.Node.GetInt("transB", 0) != 0;
            return transB ? b.Transpose(_t.WeightInput, [1, 0]) : _t.WeightInput;
        }

        private Value ReduceL2OverInputs(Value w)
        {
            if (b.Model.DefaultOpset >= 18)
            {
                return b.Op("ReduceL2", [w, b.Int64s("axes", 0)], [Attr.Int("keepdims", 0)]);
            }

            return b.Op("ReduceL2", [w], [Attr.Ints("axes", 0), Attr.Int("keepdims", 0)]);
        }

        private void Rewire(Value y, Usage[] uses, Value output)
        {
            output.Type = y.Type;
            foreach (Usage use in uses)
            {
                use.Node.ReplaceInput(use.InputIndex, output);
            }

            if (y.IsGraphOutput)
            {
                // Graph outputs keep their names: the base result is renamed instead.
                for (int i = 0; i < Graph.Outputs.Count; i++)
                {
                    if (ReferenceEquals(Graph.Outputs[i], y))
                    {
                        Graph.Outputs[i] = output;
                    }
                }

                string name = y.Name;
                y.Name = b.FreshName(name + "_base");
                output.Name = name;
            }
        }
    }
}

/// <summary>PiSSA: A and B from the top-r singular triplets of W, and the residual that replaces W.</summary>
internal static class PissaInitializer
{
    /// <summary>
    /// W [in, out] = U·S·Vᵀ; with Sr = S[:r]/s: A = U_r·√Sr [in, r], B = √Sr·V_rᵀ [r, out], residual = W − s·A·B
    /// (PEFT's pissa_init in MatMul layout).
    /// </summary>
    public static (float[] A, float[] B, float[] Residual) Compute(LinearTarget target, int rank, double scaling)
    {
        float[] w = BaseWeightReader.ReadInOut(target, "PiSSA");
        int n = checked((int)target.InFeatures);
        int m = checked((int)target.OutFeatures);
        if (rank > Math.Min(n, m))
        {
            throw new PassException($"PiSSA rank {rank} exceeds min(in, out) = {Math.Min(n, m)} of '{target.Module}'.");
        }

        SvdResult svd = TruncatedSvd.Compute(w, n, m, rank);
        var a = new float[n * rank];
        var bm = new float[rank * m];
        for (int j = 0; j < rank; j++)
        {
            double root = Math.Sqrt(svd.S[j] / scaling);
            for (int i = 0; i < n; i++)
            {
                a[i * rank + j] = (float)(svd.U[i * rank + j] * root);
            }

            for (int o = 0; o < m; o++)
            {
                bm[j * m + o] = (float)(svd.V[o * rank + j] * root);
            }
        }

        var residual = (float[])w.Clone();
        for (int i = 0; i < n; i++)
        {
            for (int o = 0; o < m; o++)
            {
                double s = 0;
                for (int j = 0; j < rank; j++)
                {
                    s += (double)a[i * rank + j] * bm[j * m + o];
                }

                residual[i * m + o] = (float)(w[i * m + o] - scaling * s);
            }
        }

        return (a, bm, residual);
    }
}

/// <summary>One-call entry points for the trainer, the exporter and the CLI.</summary>
public static class LoraInjector
{
    /// <summary>Injects adapters into <paramref name="model"/> in place and returns the manifest written into it.</summary>
    /// <exception cref="LoraOptionsException">Invalid options or an empty selection.</exception>
    /// <exception cref="PassException">The model cannot take the adapters.</exception>
    public static LoraManifest Inject(Model model, LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        new InsertLoraAdaptersPass(options).Run(model);
        return LoraManifest.Read(model)!;
    }

    /// <summary>The layers <paramref name="options"/> selects in <paramref name="model"/>, for a dry run.</summary>
    public static IReadOnlyList<SelectedTarget> Plan(Model model, LoraOptions options) => new InsertLoraAdaptersPass(options).Plan(model);

    /// <summary>Trainable parameter count of a selection: r·(in + out) per module, plus out for DoRA's magnitude.</summary>
    public static long TrainableParameters(IEnumerable<SelectedTarget> selected, bool useDora)
    {
        ArgumentNullException.ThrowIfNull(selected);
        return selected.Sum(s => s.Rank * (s.Target.InFeatures + s.Target.OutFeatures) + (useDora ? s.Target.OutFeatures : 0));
    }
}
