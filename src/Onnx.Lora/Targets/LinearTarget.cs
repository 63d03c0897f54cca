using Onnx.Lora.Ir;
using Onnx.Lora.Families;

namespace Onnx.Lora.Targets;

/// <summary>The operator that computes a targetable linear layer.</summary>
public enum LinearOpKind
{
    /// <summary>ONNX MatMul with a constant 2-D weight (possibly through Transpose / Cast / DequantizeLinear).</summary>
    MatMul,

    /// <summary>ONNX Gemm (any transA/transB, optional bias C).</summary>
    Gemm,

    /// <summary>com.microsoft MatMulNBits: a block-quantized (int4) weight: the QLoRA case.</summary>
    MatMulNBits,

    /// <summary>com.microsoft Attention: the fused qkv projection weight of ORT's transformers optimizer.</summary>
    Attention,

    /// <summary>ONNX Conv (group = 1) with a constant weight [out, in, k…]: PEFT's Conv1d/2d/3d LoRA (not in all-linear).</summary>
    Conv,

    /// <summary>ONNX Gather (axis 0) of a constant table [rows, dim]: PEFT's Embedding LoRA (not in all-linear).</summary>
    Embedding,
}

/// <summary>One linear layer y = x·W (+ bias) that LoRA can adapt, as found in a graph.</summary>
public sealed record LinearTarget
{
    /// <summary>The node computing the layer.</summary>
    public required Node Node { get; init; }

    /// <summary>Operator kind.</summary>
    public required LinearOpKind OpKind { get; init; }

    /// <summary>The activation x the layer reads (input 0 of the node).</summary>
    public required Value Activation { get; init; }

    /// <summary>True when the node reads xᵀ (Gemm transA = 1): the branch must transpose x too.</summary>
    public bool TransposeActivation { get; init; }

    /// <summary>The node input carrying the weight as the node consumes it (after any Transpose / Cast / DequantizeLinear).</summary>
    public required Value WeightInput { get; init; }

    /// <summary>The value holding the stored weight W: an initializer, or the output of a Constant node.</summary>
    public required Value Weight { get; init; }

    /// <summary>The stored weight data (the initializer's tensor or the Constant node's <c>value</c>).</summary>
    public Tensor? WeightData => ConstantWeights.TensorOf(Weight);

    /// <summary>True when the base stores W as a Constant node instead of an initializer.</summary>
    public bool WeightIsConstantNode => ConstantWeights.IsConstantNodeOutput(Weight);

    /// <summary>True when a Reshape views the stored W (of another rank) as the 2-D weight, in the same element order.</summary>
    public bool WeightReshaped { get; init; }

    /// <summary>How W is stored.</summary>
    public required WeightLayout Layout { get; init; }

    /// <summary>Input features.</summary>
    public required long InFeatures { get; init; }

    /// <summary>Output features.</summary>
    public required long OutFeatures { get; init; }

    /// <summary>Element type the layer computes in (the activation dtype).</summary>
    public required DataType ActivationType { get; init; }

    /// <summary>Element type W is stored in.</summary>
    public DataType WeightType => WeightData?.DataType ?? Weight.ElementType;

    /// <summary>True when W is stored quantized (MatMulNBits, or a DequantizeLinear before the MatMul).</summary>
    public bool Quantized { get; init; }

    /// <summary>Bias initializer added by the node (Gemm C, Attention bias, MatMulNBits bias) or by an Add right after it.</summary>
    public string? Bias { get; init; }

    /// <summary>True when <see cref="Bias"/> is an input of <see cref="Node"/> itself (so its output already includes it).</summary>
    public bool BiasInNode { get; init; }

    /// <summary>MatMulNBits bits per weight.</summary>
    public int? Bits { get; init; }

    /// <summary>MatMulNBits block size.</summary>
    public int? BlockSize { get; init; }

    /// <summary>MatMulNBits scales initializer.</summary>
    public string? Scales { get; init; }

    /// <summary>MatMulNBits zero points initializer.</summary>
    public string? ZeroPoints { get; init; }

    /// <summary>Module name as PEFT names it (set by <see cref="TargetDiscovery"/>).</summary>
    public string Module { get; init; } = string.Empty;

    /// <summary>Decoder layer index, when known.</summary>
    public int? LayerIndex { get; init; }

    /// <summary>Role in the block (attention / MLP / output head), when known.</summary>
    public ModuleRole Role { get; init; }

    /// <summary>True for the output head (lm_head, logits, tied embedding): excluded from all-linear.</summary>
    public bool IsOutputHead { get; init; }

    /// <summary>Conv only: the kernel's spatial dims; <see cref="InFeatures"/> is in-channels × their product (the flattened receptive field).</summary>
    public IReadOnlyList<long>? Kernel { get; init; }

    /// <summary>True for linear layers (MatMul, Gemm, MatMulNBits, fused Attention): what all-linear and inspect's linear list cover.</summary>
    public bool IsLinear => OpKind is not (LinearOpKind.Conv or LinearOpKind.Embedding);

    /// <summary>Number of weight parameters (in × out).</summary>
    public long WeightParameters => InFeatures * OutFeatures;

    /// <inheritdoc />
    public override string ToString() => $"{Module} ({OpKind} {InFeatures}→{OutFeatures} {ActivationType.ShortName()}{(Quantized ? " quantized" : "")})";
}
