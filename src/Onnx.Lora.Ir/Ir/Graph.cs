using System.Collections.ObjectModel;

namespace Onnx.Lora.Ir;

/// <summary>
/// A computation graph: inputs, initializers, nodes and outputs, with producer/use links kept consistent by
/// every mutation method. Subgraphs (If/Loop/Scan bodies) are graphs held by node attributes; their nodes may
/// read values of the enclosing graphs.
/// </summary>
public sealed class Graph
{
    private readonly List<Node> _nodes = [];

    /// <summary>Creates an empty graph.</summary>
    public Graph(string name = "")
    {
        Name = name;
        Inputs = new OwnedValueList(this);
        Initializers = new InitializerTable(this);
    }

    /// <summary>Graph name.</summary>
    public string Name { get; set; }

    /// <summary>Documentation string.</summary>
    public string? DocString { get; set; }

    /// <summary>Graph inputs, in order. A value may be both an input and an initializer (an input with a default).</summary>
    public Collection<Value> Inputs { get; }

    /// <summary>Graph outputs, in order.</summary>
    public List<Value> Outputs { get; } = [];

    /// <summary>Initializers by name, in model order.</summary>
    public InitializerTable Initializers { get; }

    /// <summary>Nodes in their current order (see <see cref="SortTopologically"/>).</summary>
    public IReadOnlyList<Node> Nodes => _nodes;

    /// <summary>The node whose attribute holds this graph; null for a main graph.</summary>
    public Node? ParentNode { get; internal set; }

    /// <summary>Metadata properties, kept in order.</summary>
    public List<KeyValuePair<string, string>> MetadataProps { get; } = [];

    /// <summary>Serialized SparseTensorProto initializers, kept as they were.</summary>
    public List<ReadOnlyMemory<byte>> SparseInitializers { get; } = [];

    /// <summary>Serialized TensorAnnotation entries, kept as they were.</summary>
    public List<ReadOnlyMemory<byte>> QuantizationAnnotations { get; } = [];

    /// <summary>Unknown protobuf fields, kept for round trips.</summary>
    public ReadOnlyMemory<byte> UnknownFields { get; set; }

    /// <summary>Appends a node at the end.</summary>
    public Node Add(Node node)
    {
        Attach(node);
        _nodes.Add(node);
        return node;
    }

    /// <summary>Inserts <paramref name="node"/> just before <paramref name="anchor"/>.</summary>
    public Node InsertBefore(Node anchor, Node node)
    {
        int index = IndexOf(anchor);
        Attach(node);
        _nodes.Insert(index, node);
        return node;
    }

    /// <summary>Inserts <paramref name="node"/> just after <paramref name="anchor"/>.</summary>
    public Node InsertAfter(Node anchor, Node node)
    {
        int index = IndexOf(anchor);
        Attach(node);
        _nodes.Insert(index + 1, node);
        return node;
    }

    /// <summary>
    /// Moves <paramref name="node"/> to the end of the node list, links unchanged (ONNX Runtime numbers nodes in file
    /// order, and that order steers its execution order). The caller keeps the order topological: every reader of the
    /// node's outputs must be moved after it.
    /// </summary>
    /// <exception cref="GraphValidationException">The node is not in this graph.</exception>
    public void MoveToEnd(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        _nodes.RemoveAt(IndexOf(node));
        _nodes.Add(node);
    }

    /// <summary>
    /// Moves <paramref name="node"/> to just after <paramref name="anchor"/>, links unchanged. The caller keeps the order
    /// topological: the node's inputs are produced at or before the anchor, and its readers come after it.
    /// </summary>
    /// <exception cref="GraphValidationException">Either node is not in this graph.</exception>
    public void MoveAfter(Node anchor, Node node)
    {
        ArgumentNullException.ThrowIfNull(anchor);
        ArgumentNullException.ThrowIfNull(node);
        _nodes.RemoveAt(IndexOf(node));
        _nodes.Insert(IndexOf(anchor) + 1, node);
    }

    /// <summary>
    /// Removes a node. With <paramref name="safe"/>, refuses (before changing anything) when an output of the node is
    /// still read by another node or is a graph output.
    /// </summary>
    /// <exception cref="GraphValidationException">The node is not in this graph, or (safe) its outputs are still used.</exception>
    public void Remove(Node node, bool safe = true)
    {
        ArgumentNullException.ThrowIfNull(node);
        int index = IndexOf(node);
        if (safe)
        {
            foreach (Value output in node.Outputs)
            {
                if (output.Uses.Count > 0)
                {
                    throw new GraphValidationException($"Cannot remove node '{node.Name}' ({node.OpType}): output '{output.Name}' is still read by '{output.Uses[0].Node.Name}' ({output.Uses[0].Node.OpType}).");
                }

                if (Outputs.Contains(output))
                {
                    throw new GraphValidationException($"Cannot remove node '{node.Name}' ({node.OpType}): output '{output.Name}' is a graph output.");
                }
            }
        }

        _nodes.RemoveAt(index);
        node.ClearInputs();
        node.Graph = null;
        foreach (Value output in node.Outputs)
        {
            output.Graph = null;
        }
    }

    /// <summary>Adds an initializer value holding <paramref name="tensor"/>, named as the tensor.</summary>
    /// <exception cref="GraphValidationException">An initializer of that name exists.</exception>
    public Value AddInitializer(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var value = new Value(tensor.Name, ValueType.Tensor(tensor.DataType, Shape.Of(tensor.Dims.Select(d => new Dim(d)).ToArray())));
        Initializers.Add(value, tensor);
        return value;
    }

    /// <summary>Every value defined in this graph: inputs, initializers and node outputs (not subgraphs).</summary>
    public IEnumerable<Value> DefinedValues()
    {
        var seen = new HashSet<Value>(ReferenceEqualityComparer.Instance);
        foreach (Value v in Inputs.Concat(Initializers.Values).Concat(_nodes.SelectMany(n => n.Outputs)))
        {
            if (v.Name.Length > 0 && seen.Add(v))
            {
                yield return v;
            }
        }
    }

    /// <summary>Every node of this graph and, recursively, of its subgraphs.</summary>
    public IEnumerable<Node> AllNodes()
    {
        foreach (Node node in _nodes)
        {
            yield return node;
            foreach (Attr attr in node.Attributes.Values)
            {
                foreach (Graph sub in attr.Subgraphs())
                {
                    foreach (Node inner in sub.AllNodes())
                    {
                        yield return inner;
                    }
                }
            }
        }
    }

    /// <summary>Values read by this graph's nodes (recursively) that belong to an enclosing graph.</summary>
    public IEnumerable<Value> OuterScopeReads()
    {
        foreach (Node node in AllNodes())
        {
            foreach (Value? input in node.Inputs)
            {
                if (input is not null && !IsInScope(input))
                {
                    yield return input;
                }
            }
        }

        foreach (Value output in Outputs)
        {
            if (!IsInScope(output))
            {
                yield return output;
            }
        }
    }

    /// <summary>
    /// Reorders nodes so that every node comes after the producers of its inputs (and of the outer values its
    /// subgraphs read). Nodes keep their current order wherever it is already valid; a node that is needed earlier
    /// (e.g. one appended at the end by a rewrite) moves to just before its first consumer, so a rewrite that only
    /// adds nodes leaves the original nodes in their original relative order.
    /// </summary>
    /// <exception cref="GraphValidationException">The graph has a cycle.</exception>
    public void SortTopologically()
    {
        List<Node> order = TopologicalOrder();
        _nodes.Clear();
        _nodes.AddRange(order);
    }

    /// <summary>Refuses a graph with a cycle (no valid ONNX graph has one) without reordering its nodes.</summary>
    /// <exception cref="GraphValidationException">The graph has a cycle; the message names a node on it.</exception>
    public void EnsureAcyclic() => _ = TopologicalOrder();

    private List<Node> TopologicalOrder()
    {
        var state = new Dictionary<Node, bool>(ReferenceEqualityComparer.Instance); // false: on the stack, true: emitted
        var order = new List<Node>(_nodes.Count);
        var stack = new Stack<(Node Node, IEnumerator<Node> Dependencies)>();
        foreach (Node root in _nodes)
        {
            if (state.ContainsKey(root))
            {
                continue;
            }

            // Iterative depth-first search: graphs have chains thousands of nodes long.
            state[root] = false;
            stack.Push((root, Dependencies(root).GetEnumerator()));
            while (stack.Count > 0)
            {
                (Node node, IEnumerator<Node> deps) = stack.Peek();
                if (deps.MoveNext())
                {
                    Node dep = deps.Current;
                    if (!state.TryGetValue(dep, out bool emitted))
                    {
                        state[dep] = false;
                        stack.Push((dep, Dependencies(dep).GetEnumerator()));
                    }
                    else if (!emitted)
                    {
                        throw new GraphValidationException($"Graph '{Name}' has a cycle through node '{dep.Name}' ({dep.OpType}).");
                    }

                    continue;
                }

                deps.Dispose();
                stack.Pop();
                state[node] = true;
                order.Add(node);
            }
        }

        return order;
    }

    private IEnumerable<Node> Dependencies(Node node)
    {
        foreach (Value input in node.Inputs.OfType<Value>().Concat(node.ImplicitInputs()))
        {
            Node? producer = ProducerInThisGraph(input);
            if (producer is not null && !ReferenceEquals(producer, node) && ReferenceEquals(producer.Graph, this))
            {
                yield return producer;
            }
        }
    }

    /// <summary>Finds a value defined in this graph by name (inputs, initializers, node outputs).</summary>
    public Value? FindValue(string name) => DefinedValues().FirstOrDefault(v => v.Name == name);

    /// <summary>Names used anywhere in this graph and its subgraphs (values and nodes), for making fresh names.</summary>
    public HashSet<string> UsedNames()
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (Value v in DefinedValues())
        {
            names.Add(v.Name);
        }

        foreach (Node n in AllNodes())
        {
            names.Add(n.Name);
            foreach (Value o in n.Outputs)
            {
                names.Add(o.Name);
            }
        }

        return names;
    }

    private Node? ProducerInThisGraph(Value value)
    {
        Node? producer = value.Producer;
        while (producer is not null && !ReferenceEquals(producer.Graph, this))
        {
            // An outer value read inside a subgraph: the dependency is on the node that owns the subgraph.
            producer = producer.Graph?.ParentNode;
        }

        return producer;
    }

    private bool IsInScope(Value value)
    {
        for (Graph? g = value.Graph; g is not null; g = g.ParentNode?.Graph)
        {
            if (ReferenceEquals(g, this))
            {
                return true;
            }
        }

        return false;
    }

    private int IndexOf(Node node)
    {
        int index = _nodes.IndexOf(node);
        if (index < 0)
        {
            throw new GraphValidationException($"Node '{node.Name}' ({node.OpType}) is not in graph '{Name}'.");
        }

        return index;
    }

    private void Attach(Node node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (node.Graph is not null)
        {
            throw new GraphValidationException($"Node '{node.Name}' ({node.OpType}) already belongs to graph '{node.Graph.Name}'.");
        }

        node.Graph = this;
        foreach (Value output in node.Outputs)
        {
            output.Graph = this;
        }

        foreach (Attr attr in node.Attributes.Values)
        {
            foreach (Graph sub in attr.Subgraphs())
            {
                sub.ParentNode = node;
            }
        }
    }

    /// <summary>Graph inputs; adding one makes the graph its owner.</summary>
    private sealed class OwnedValueList(Graph owner) : Collection<Value>
    {
        protected override void InsertItem(int index, Value item)
        {
            ArgumentNullException.ThrowIfNull(item);
            item.Graph = owner;
            base.InsertItem(index, item);
        }

        protected override void SetItem(int index, Value item)
        {
            ArgumentNullException.ThrowIfNull(item);
            item.Graph = owner;
            base.SetItem(index, item);
        }
    }
}

/// <summary>The initializers of a graph by name, in model order.</summary>
public sealed class InitializerTable
{
    private readonly Graph _owner;
    private readonly OrderedDictionary<string, Value> _values = new(StringComparer.Ordinal);

    internal InitializerTable(Graph owner) => _owner = owner;

    /// <summary>Number of initializers.</summary>
    public int Count => _values.Count;

    /// <summary>Initializer values in order.</summary>
    public IEnumerable<Value> Values => _values.Values;

    /// <summary>The initializer named <paramref name="name"/>.</summary>
    public Value this[string name] => _values[name];

    /// <summary>True when an initializer of that name exists.</summary>
    public bool Contains(string name) => _values.ContainsKey(name);

    /// <summary>Looks an initializer up by name.</summary>
    public bool TryGetValue(string name, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out Value value) => _values.TryGetValue(name, out value);

    /// <summary>Makes <paramref name="value"/> an initializer holding <paramref name="tensor"/>.</summary>
    /// <exception cref="GraphValidationException">The name is taken.</exception>
    public void Add(Value value, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(value);
        ArgumentNullException.ThrowIfNull(tensor);
        if (_values.ContainsKey(value.Name))
        {
            throw new GraphValidationException($"Graph '{_owner.Name}' already has an initializer named '{value.Name}'.");
        }

        if (tensor.Name != value.Name)
        {
            tensor.Name = value.Name;
        }

        value.Initializer = tensor;
        value.Graph = _owner;
        _values.Add(value.Name, value);
    }

    /// <summary>Replaces the data of an existing initializer (same value, same uses).</summary>
    public void SetData(string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        Value value = _values[name];
        tensor.Name = name;
        value.Initializer = tensor;
    }

    /// <summary>Removes an initializer. With <paramref name="safe"/>, refuses while a node still reads it.</summary>
    /// <exception cref="GraphValidationException">(safe) The initializer is still used or is a graph output.</exception>
    public void Remove(string name, bool safe = true)
    {
        Value value = _values[name];
        if (safe && (value.Uses.Count > 0 || _owner.Outputs.Contains(value)))
        {
            throw new GraphValidationException($"Cannot remove initializer '{name}' of graph '{_owner.Name}': it is still used.");
        }

        _values.Remove(name);
        value.Initializer = null;
        if (!_owner.Inputs.Contains(value))
        {
            value.Graph = null;
        }
    }

    /// <summary>Renames an initializer, keeping its position.</summary>
    public void Rename(string oldName, string newName)
    {
        int index = _values.IndexOf(oldName);
        if (index < 0)
        {
            throw new GraphValidationException($"Graph '{_owner.Name}' has no initializer '{oldName}'.");
        }

        if (_values.ContainsKey(newName))
        {
            throw new GraphValidationException($"Graph '{_owner.Name}' already has an initializer named '{newName}'.");
        }

        Value value = _values.GetAt(index).Value;
        _values.RemoveAt(index);
        value.Name = newName;
        value.Initializer!.Name = newName;
        _values.Insert(index, newName, value);
    }
}
