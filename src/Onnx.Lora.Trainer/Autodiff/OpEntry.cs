using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// The vector-Jacobian product of one op: given the gradients of the loss w.r.t. a node's outputs
/// (<see cref="BackwardStep.OutputGradients"/>), emits the nodes that compute the gradients w.r.t. its inputs. Writes
/// a gradient only for inputs where <see cref="BackwardStep.NeedsGradient(int)"/> is true (frozen inputs get none).
/// </summary>
/// <param name="context">Builder, constants and shape facts of the graph being differentiated.</param>
/// <param name="step">The node being differentiated.</param>
public delegate void Vjp(GradientContext context, BackwardStep step);

/// <summary>Static dims of output <paramref name="output"/> of <paramref name="node"/>; null when even the rank is unknown.</summary>
internal delegate Dim[]? ShapeRule(ValueFacts facts, Node node, int output);

/// <summary>Element type of output <paramref name="output"/> of <paramref name="node"/>; Undefined when it cannot be told.</summary>
internal delegate DataType TypeRule(ValueFacts facts, Node node, int output);

/// <summary>Whether gradients flow through an op.</summary>
internal enum Differentiability
{
    /// <summary>The op has a <see cref="OpEntry.Vjp"/>.</summary>
    Differentiable,

    /// <summary>
    /// The outputs do not depend smoothly on the float inputs (shapes, comparisons, rounding, random, masks built from
    /// constants): paths through the op are cut, as a stop-gradient would.
    /// </summary>
    None,

    /// <summary>Differentiable in principle but no VJP is written yet: a node on a trainable path is an error.</summary>
    NotImplemented,
}

/// <summary>
/// Everything the trainer knows of one op, in one record: its key (domain, op type), how its outputs' shapes and
/// element types follow from its inputs (<see cref="ValueFacts"/>), whether and through which inputs gradients flow,
/// and its VJP (<see cref="BackwardGraph"/>). Entries are listed, by op family, in <see cref="OpTable.Default"/>.
/// </summary>
/// <param name="Domain">Operator domain; "" for the default ONNX domain ("ai.onnx" is normalized to "").</param>
/// <param name="OpType">Operator type.</param>
internal sealed record OpEntry(string Domain, string OpType)
{
    /// <summary>Shape rule; <see cref="Shapes.Unknown"/> is the explicit marker for "no static shape".</summary>
    public required ShapeRule Shape { get; init; }

    /// <summary>Type rule; <see cref="Types.FirstFloatInput"/> (the type of the first floating-point input) by default.</summary>
    public TypeRule Type { get; init; } = Types.FirstFloatInput;

    /// <summary>Whether gradients flow through the op.</summary>
    public required Differentiability Gradient { get; init; }

    /// <summary>The VJP; set exactly when <see cref="Gradient"/> is <see cref="Differentiability.Differentiable"/>.</summary>
    public Vjp? Vjp { get; init; }

    /// <summary>
    /// Inputs whose derivative is zero or undefined (indices, shapes, axes, conditions, type templates): paths
    /// through them are cut. Float inputs whose gradient is merely not written (masks, caches) are not listed; their
    /// VJP refuses or ignores them.
    /// </summary>
    public IReadOnlySet<int> NonDifferentiableInputs { get; init; } = new HashSet<int>();

    /// <summary>What the op is to the training memory estimate.</summary>
    public OpRole Role { get; init; }

    /// <summary>"ai.onnx::Erf" style key for messages.</summary>
    public override string ToString() => $"{(Domain.Length > 0 ? Domain : "ai.onnx")}::{OpType}";
}

/// <summary>What an op stands for in a decoder, for estimates that count layers and LoRA targets without tracing the graph.</summary>
internal enum OpRole
{
    /// <summary>Nothing particular.</summary>
    None,

    /// <summary>A linear layer whose input 1 is the weight (MatMul, Gemm, FusedMatMul).</summary>
    Linear,

    /// <summary>One per attention layer (a fused attention op, or the Softmax of a decomposed one).</summary>
    Attention,
}
