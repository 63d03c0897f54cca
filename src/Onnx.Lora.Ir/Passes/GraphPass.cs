namespace Onnx.Lora.Ir.Passes;

/// <summary>What a pass returns: the (possibly new) model and whether anything changed.</summary>
/// <param name="Model">The model after the pass.</param>
/// <param name="Modified">True when the pass changed the model.</param>
public readonly record struct PassResult(Model Model, bool Modified);

/// <summary>
/// One rewrite of a model. Subclasses are <see cref="InPlacePass"/> (mutates the model it is given) or
/// <see cref="FunctionalPass"/> (returns a new model). <see cref="Requires"/> and <see cref="Ensures"/> check the
/// pre- and post-conditions of the pass; they throw <see cref="PassException"/> when a condition does not hold.
/// </summary>
public abstract class GraphPass
{
    /// <summary>Name used in error messages; the class name by default.</summary>
    public virtual string Name => GetType().Name;

    /// <summary>True when the pass mutates the model it is given.</summary>
    public abstract bool InPlace { get; }

    /// <summary>Runs the pass: <see cref="Requires"/>, <see cref="Call"/>, then <see cref="Ensures"/>.</summary>
    /// <exception cref="PassException">A condition does not hold, or the pass failed; wraps the cause.</exception>
    public PassResult Run(Model model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Requires(model);
        PassResult result = Call(model);
        Ensures(result.Model);
        return result;
    }

    /// <summary>Checks the preconditions; the default accepts every model.</summary>
    /// <exception cref="PassException">A precondition does not hold.</exception>
    protected virtual void Requires(Model model)
    {
    }

    /// <summary>Checks the postconditions; the default accepts every model.</summary>
    /// <exception cref="PassException">A postcondition does not hold.</exception>
    protected virtual void Ensures(Model model)
    {
    }

    /// <summary>The rewrite itself.</summary>
    protected abstract PassResult Call(Model model);
}

/// <summary>A pass that mutates the model it is given and returns it.</summary>
public abstract class InPlacePass : GraphPass
{
    /// <inheritdoc />
    public sealed override bool InPlace => true;
}

/// <summary>A pass that leaves its input alone and returns a new model.</summary>
public abstract class FunctionalPass : GraphPass
{
    /// <inheritdoc />
    public sealed override bool InPlace => false;
}

/// <summary>Runs passes in order; a failure is reported with the failing pass and the passes that ran before it.</summary>
public sealed class PassPipeline : GraphPass
{
    private readonly GraphPass[] _passes;

    /// <summary>Creates a pipeline of <paramref name="passes"/>.</summary>
    public PassPipeline(params GraphPass[] passes)
    {
        ArgumentNullException.ThrowIfNull(passes);
        _passes = passes.ToArray();
    }

    /// <summary>The passes, in order.</summary>
    public IReadOnlyList<GraphPass> Passes => _passes;

    /// <inheritdoc />
    public override bool InPlace => _passes.All(p => p.InPlace);

    /// <inheritdoc />
    protected override PassResult Call(Model model)
    {
        bool modified = false;
        for (int i = 0; i < _passes.Length; i++)
        {
            try
            {
                PassResult result = _passes[i].Run(model);
                model = result.Model;
                modified |= result.Modified;
            }
            catch (Exception e) when (e is ToolchainException or InvalidOperationException or ArgumentException)
            {
                string before = i == 0 ? "none" : string.Join(", ", _passes.Take(i).Select(p => p.Name));
                throw new PassException($"Pass '{_passes[i].Name}' failed (passes run before it: {before}): {e.Message}", e);
            }
        }

        return new PassResult(model, modified);
    }
}

/// <summary>Removes nodes whose outputs nobody reads, and initializers nobody reads (graph outputs are kept).</summary>
public sealed class RemoveUnusedNodesPass : InPlacePass
{
    /// <inheritdoc />
    protected override PassResult Call(Model model)
    {
        Graph graph = model.Graph;
        bool modified = false;
        bool changed = true;
        while (changed)
        {
            changed = false;
            foreach (Node node in graph.Nodes.Reverse().ToArray())
            {
                if (node.Outputs.All(o => o.Uses.Count == 0 && !o.IsGraphOutput))
                {
                    graph.Remove(node, safe: true);
                    changed = modified = true;
                }
            }
        }

        foreach (Value init in graph.Initializers.Values.ToArray())
        {
            if (init.Uses.Count == 0 && !init.IsGraphOutput && !init.IsGraphInput)
            {
                graph.Initializers.Remove(init.Name, safe: true);
                modified = true;
            }
        }

        return new PassResult(model, modified);
    }
}
