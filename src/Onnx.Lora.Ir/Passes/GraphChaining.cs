namespace Onnx.Lora.Ir.Passes;

/// <summary>
/// Joins two models that exporters split at a named value — e.g. ORT GenAI's <c>embedding.onnx</c> (input_ids →
/// inputs_embeds) in front of <c>text.onnx</c> (inputs_embeds → logits) — into one graph that computes exactly what
/// running them one after the other computes, so a split model can be trained (and differentiated) as one.
/// </summary>
public static class GraphChaining
{
    /// <summary>Prefix given to names of the front model that the back graph already uses.</summary>
    public const string CollisionPrefix = "chained/";

    /// <summary>
    /// Makes <paramref name="back"/> compute its input <paramref name="joinName"/> with <paramref name="front"/>'s
    /// output of that name: front's nodes and initializers are copied in front of back's nodes, front's used inputs
    /// become back's inputs (an input both graphs declare is shared), and the joined input is removed. Front's
    /// tensors are moved, not copied: keep <paramref name="front"/> undisposed while <paramref name="back"/> may read
    /// them (external data stays in front's files until back is saved).
    /// </summary>
    /// <param name="back">The model that takes <paramref name="joinName"/> as an input; changed in place.</param>
    /// <param name="front">The model whose output <paramref name="joinName"/> feeds it; consumed.</param>
    /// <param name="joinName">The value name where the models meet.</param>
    /// <param name="frontLabel">How messages name the front model (its file).</param>
    /// <returns>Names of the inputs the chained graph took over from <paramref name="front"/>.</returns>
    /// <exception cref="GraphValidationException">The models do not meet at <paramref name="joinName"/>, disagree on its
    /// type or on an opset, or front holds subgraphs.</exception>
    public static IReadOnlyList<string> Prepend(Model back, Model front, string joinName, string frontLabel) =>
        Prepend(back, front, joinName, frontLabel, shareEqualInitializers: false);

    /// <summary>
    /// <see cref="Prepend(Model, Model, string, string)"/>, optionally sharing weights: with
    /// <paramref name="shareEqualInitializers"/>, a front initializer whose name, type, shape and bytes equal one of
    /// back's is read from back's (the token embedding both halves of an encoder-decoder export hold) instead of
    /// being copied in under a prefixed name.
    /// </summary>
    public static IReadOnlyList<string> Prepend(Model back, Model front, string joinName, string frontLabel, bool shareEqualInitializers)
    {
        ArgumentNullException.ThrowIfNull(back);
        ArgumentNullException.ThrowIfNull(front);
        Graph target = back.Graph;
        Graph source = front.Graph;
        Value joined = target.Inputs.FirstOrDefault(v => v.Name == joinName)
            ?? throw new GraphValidationException($"The model has no input '{joinName}' for '{frontLabel}' to feed.");
        Value produced = source.Outputs.FirstOrDefault(v => v.Name == joinName)
            ?? throw new GraphValidationException($"'{frontLabel}' has no output '{joinName}' (outputs: {string.Join(", ", source.Outputs.Select(o => o.Name))}).");
        if (joined.ElementType != DataType.Undefined && produced.ElementType != DataType.Undefined && joined.ElementType != produced.ElementType)
        {
            throw new GraphValidationException($"'{frontLabel}' makes '{joinName}' as {produced.ElementType.ShortName()}, the model reads {joined.ElementType.ShortName()}.");
        }

        if (source.AllNodes().Any(n => n.Attributes.Values.Any(a => a.Subgraphs().Any())))
        {
            throw new GraphValidationException($"'{frontLabel}' holds control-flow subgraphs (If/Loop/Scan); chaining it is not supported.");
        }

        MergeOpsets(back, front, frontLabel);
        var map = new Dictionary<Value, Value>(ReferenceEqualityComparer.Instance);
        var taken = target.UsedNames();
        taken.Remove(joinName);
        string Fresh(string name)
        {
            if (name.Length == 0 || taken.Add(name))
            {
                return name;
            }

            string candidate = CollisionPrefix + name;
            for (int i = 2; !taken.Add(candidate); i++)
            {
                candidate = $"{CollisionPrefix}{i}/{name}";
            }

            return candidate;
        }

        var takenInputs = new List<string>();
        int insertAt = target.Inputs.IndexOf(joined);
        foreach (Value input in source.Inputs.Where(v => !v.IsInitializer && (v.Uses.Count > 0 || v.IsGraphOutput)))
        {
            Value? shared = target.Inputs.FirstOrDefault(v => v.Name == input.Name && v.Name != joinName);
            if (shared is not null)
            {
                if (shared.ElementType != input.ElementType)
                {
                    throw new GraphValidationException($"Input '{input.Name}' is {input.ElementType.ShortName()} in '{frontLabel}' and {shared.ElementType.ShortName()} in the model.");
                }

                map[input] = shared;
                continue;
            }

            var copy = new Value(Fresh(input.Name), input.Type) { DocString = input.DocString };
            target.Inputs.Insert(insertAt++, copy);
            map[input] = copy;
            takenInputs.Add(copy.Name);
        }

        foreach (Value init in source.Initializers.Values.ToArray())
        {
            if (init.Uses.Count == 0 && !init.IsGraphOutput)
            {
                continue;
            }

            Tensor tensor = init.Initializer!;
            if (shareEqualInitializers && target.Initializers.TryGetValue(init.Name, out Value? twin) && SameTensor(twin.Initializer!, tensor))
            {
                map[init] = twin;
                continue;
            }

            var copy = new Value(Fresh(init.Name), init.Type) { DocString = init.DocString };
            target.Initializers.Add(copy, tensor);
            map[init] = copy;
        }

        Node? anchor = target.Nodes.Count > 0 ? target.Nodes[0] : null;
        foreach (Node node in source.Nodes)
        {
            var inputs = node.Inputs.Select(v => v is null ? null : map.TryGetValue(v, out Value? m) ? m
                : throw new GraphValidationException($"'{frontLabel}': node '{node.Name}' ({node.OpType}) reads '{v.Name}', which nothing defines."));
            var copy = new Node(node.Domain, node.OpType, inputs, node.Outputs.Select(o => Fresh(o.Name)), node.Attributes.Values, Fresh(node.Name))
            {
                DocString = node.DocString,
                Overload = node.Overload,
            };
            copy.MetadataProps.AddRange(node.MetadataProps);
            for (int i = 0; i < node.Outputs.Count; i++)
            {
                copy.Outputs[i].Type = node.Outputs[i].Type;
                map[node.Outputs[i]] = copy.Outputs[i];
            }

            _ = anchor is null ? target.Add(copy) : target.InsertBefore(anchor, copy);
        }

        Value made = map[produced];
        joined.ReplaceAllUsesWith(made, replaceGraphOutputs: true);
        target.Inputs.Remove(joined);
        return takenInputs;
    }

    private static bool SameTensor(Tensor a, Tensor b) =>
        a.DataType == b.DataType && a.Dims.SequenceEqual(b.Dims) && a.ByteLength == b.ByteLength && a.GetBytes().Span.SequenceEqual(b.GetBytes().Span);

    // Front's nodes keep the meaning their opset gave them only if the chained model imports the same versions.
    private static void MergeOpsets(Model back, Model front, string frontLabel)
    {
        var used = front.Graph.Nodes.Select(n => n.IsStandardDomain ? string.Empty : n.Domain).ToHashSet(StringComparer.Ordinal);
        foreach ((string domain, long version) in front.OpsetImports)
        {
            string key = domain == "ai.onnx" ? string.Empty : domain;
            if (!used.Contains(key))
            {
                continue;
            }

            if (back.OpsetImports.TryGetValue(key, out long have) && have != version)
            {
                throw new GraphValidationException($"'{frontLabel}' imports opset {(key.Length == 0 ? "ai.onnx" : key)} {version}, the model {have}: chain models exported with the same opset.");
            }

            back.OpsetImports[key] = version;
        }
    }
}
