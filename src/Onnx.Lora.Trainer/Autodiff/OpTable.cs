using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Autodiff.Rules;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// One record per op (<see cref="OpEntry"/>), keyed by (domain, op type): the single place the autodiff
/// (<see cref="BackwardGraph"/>), the shape facts (<see cref="ValueFacts"/>) and the training memory estimate read
/// what they know of an op. Adding an op is adding its entry to its family's list.
/// </summary>
/// <remarks>
/// NOTE: the families are listed here explicitly (no reflection), so the whole op set is what this file names; the
/// LoRA target matchers live in the rewriter, which the trainer references and which cannot see this table.
/// </remarks>
internal sealed class OpTable
{
    private static readonly Lazy<OpTable> s_default = new(() => new OpTable(
    [
        .. UnaryOps.Entries,
        .. ElementwiseOps.Entries,
        .. ShapeOps.Entries,
        .. ReduceOps.Entries,
        .. MatMulOps.Entries,
        .. SoftmaxOps.Entries,
        .. LossOps.Entries,
        .. NormalizationOps.Entries,
        .. ActivationOps.Entries,
        .. ConvOps.Entries,
        .. QuantizedOps.Entries,
        .. AttentionOps.Entries,
    ]));

    private readonly Dictionary<(string Domain, string OpType), OpEntry> _entries = [];

    /// <summary>Builds a table from <paramref name="entries"/>.</summary>
    /// <exception cref="ArgumentException">Two entries have the same (domain, op type).</exception>
    public OpTable(IEnumerable<OpEntry> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        foreach (OpEntry entry in entries)
        {
            OpEntry normalized = entry with { Domain = NormalizeDomain(entry.Domain) };
            if (!_entries.TryAdd((normalized.Domain, normalized.OpType), normalized))
            {
                throw new ArgumentException($"Op {normalized} has two entries in the op table.", nameof(entries));
            }
        }
    }

    /// <summary>The table of every op the trainer knows.</summary>
    public static OpTable Default => s_default.Value;

    /// <summary>Every entry.</summary>
    public IReadOnlyCollection<OpEntry> Entries => _entries.Values;

    /// <summary>The entry of an op, or null.</summary>
    public OpEntry? Find(string domain, string opType) => _entries.GetValueOrDefault((NormalizeDomain(domain), opType));

    /// <summary>The entry of <paramref name="node"/>'s op, or null.</summary>
    public OpEntry? Find(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return Find(node.Domain, node.OpType);
    }

    private static string NormalizeDomain(string domain) => domain == "ai.onnx" ? string.Empty : domain;
}

/// <summary>Constructors of <see cref="OpEntry"/>s for the family lists, so that a plain op is one line.</summary>
internal static class Op
{
    private const string Ms = "com.microsoft";

    /// <summary>A differentiable default-domain op.</summary>
    public static OpEntry Grad(string opType, ShapeRule shape, Vjp vjp, params int[] nonDifferentiableInputs) =>
        Grad(string.Empty, opType, shape, vjp, nonDifferentiableInputs);

    /// <summary>A differentiable op of <paramref name="domain"/>.</summary>
    public static OpEntry Grad(string domain, string opType, ShapeRule shape, Vjp vjp, params int[] nonDifferentiableInputs) =>
        new(domain, opType)
        {
            Shape = shape,
            Gradient = Differentiability.Differentiable,
            Vjp = vjp,
            NonDifferentiableInputs = nonDifferentiableInputs.ToHashSet(),
        };

    /// <summary>A differentiable com.microsoft op.</summary>
    public static OpEntry MsGrad(string opType, ShapeRule shape, Vjp vjp, params int[] nonDifferentiableInputs) =>
        Grad(Ms, opType, shape, vjp, nonDifferentiableInputs);

    /// <summary>
    /// A single-input elementwise op: output shaped like the input, dX = <paramref name="inputGradient"/>(X, Y, dY).
    /// </summary>
    public static OpEntry Unary(string opType, Func<GradientContext, Value, Value, Value, Value> inputGradient, params int[] nonDifferentiableInputs) =>
        Unary(opType, Shapes.SameAsInput, inputGradient, nonDifferentiableInputs);

    /// <summary>An op whose only differentiable input is input 0: dX = <paramref name="inputGradient"/>(X, Y, dY).</summary>
    public static OpEntry Unary(string opType, ShapeRule shape, Func<GradientContext, Value, Value, Value, Value> inputGradient, params int[] nonDifferentiableInputs) =>
        Grad(opType, shape, (context, step) =>
        {
            if (step.NeedsGradient(0))
            {
                step.SetInputGradient(0, inputGradient(context, step.Input(0), step.Output(0), step.OutputGradient(0)!));
            }
        }, nonDifferentiableInputs);

    /// <summary>A default-domain op gradients do not flow through (the paths are cut).</summary>
    public static OpEntry Cut(string opType, ShapeRule shape, TypeRule? type = null) =>
        new(string.Empty, opType) { Shape = shape, Type = type ?? Types.FirstFloatInput, Gradient = Differentiability.None };

    /// <summary>An op whose facts are known but whose VJP is not written: on a trainable path it is an error.</summary>
    public static OpEntry NoVjp(string domain, string opType, ShapeRule shape, TypeRule? type = null) =>
        new(domain, opType) { Shape = shape, Type = type ?? Types.FirstFloatInput, Gradient = Differentiability.NotImplemented };
}
