using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// The vector-Jacobian product of one operator: given the gradients of the loss w.r.t. a node's outputs, emits the
/// nodes that compute the gradients w.r.t. its inputs. One small type per op, registered in a
/// <see cref="GradientRuleRegistry"/> by (domain, op type).
/// </summary>
public interface IGradientRule
{
    /// <summary>Operator domain ("" for the default ONNX domain).</summary>
    string Domain { get; }

    /// <summary>Operator types this rule differentiates (usually one).</summary>
    IReadOnlyList<string> OpTypes { get; }

    /// <summary>
    /// Emits the backward nodes of <paramref name="step"/>.<see cref="BackwardStep.Node"/>. Writes a gradient
    /// only for inputs where <see cref="BackwardStep.NeedsGradient(int)"/> is true (frozen inputs get none).
    /// </summary>
    void Backward(GradientContext context, BackwardStep step);
}

/// <summary>One node being differentiated: its output gradients in, its input gradients out.</summary>
public sealed class BackwardStep
{
    private readonly bool[] _needs;
    private readonly Value?[] _inputGradients;

    internal BackwardStep(Node node, Value?[] outputGradients, bool[] needs)
    {
        Node = node;
        OutputGradients = outputGradients;
        _needs = needs;
        _inputGradients = new Value?[node.Inputs.Count];
    }

    /// <summary>The forward node.</summary>
    public Node Node { get; }

    /// <summary>Gradient of the loss w.r.t. each output (null when no gradient reaches that output).</summary>
    public IReadOnlyList<Value?> OutputGradients { get; }

    /// <summary>Gradients produced for the inputs so far.</summary>
    public IReadOnlyList<Value?> InputGradients => _inputGradients;

    /// <summary>Forward input <paramref name="index"/>.</summary>
    /// <exception cref="LoraException">The input is omitted.</exception>
    public Value Input(int index) =>
        index < Node.Inputs.Count && Node.Inputs[index] is { } v
            ? v
            : throw new LoraException($"Node '{Node.Name}' ({Node.OpType}) has no input {index}, which its gradient needs.");

    /// <summary>Forward input <paramref name="index"/>, or null when it is omitted.</summary>
    public Value? OptionalInput(int index) => index < Node.Inputs.Count ? Node.Inputs[index] : null;

    /// <summary>Forward output <paramref name="index"/>.</summary>
    public Value Output(int index) => Node.Outputs[index];

    /// <summary>The gradient w.r.t. output <paramref name="index"/> (null when none flows there).</summary>
    public Value? OutputGradient(int index) => index < OutputGradients.Count ? OutputGradients[index] : null;

    /// <summary>True when the loss gradient w.r.t. input <paramref name="index"/> is needed.</summary>
    public bool NeedsGradient(int index) => index < _needs.Length && _needs[index];

    /// <summary>Sets the gradient of input <paramref name="index"/> (ignored when it is not needed).</summary>
    public void SetInputGradient(int index, Value? gradient)
    {
        if (NeedsGradient(index))
        {
            _inputGradients[index] = gradient;
        }
    }
}
