using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Autodiff;

/// <summary>
/// Reading shape tensors symbolically: the length and the elements (constants, or dims of other values) of the 1-D
/// int64 tensors that Reshape, Expand, Slice and ConstantOfShape take, and the dim arithmetic their rules need.
/// </summary>
internal sealed partial class ValueFacts
{
    /// <summary>Length of a 1-D int64 shape tensor when it can be told statically (constants, Shape, Concat, Unsqueeze of scalars).</summary>
    public int? StaticLength(Value? v)
    {
        if (v is null)
        {
            return null;
        }

        if (ConstInts(v) is { } c)
        {
            return c.Length;
        }

        Node? n = v.Producer;
        return n?.OpType switch
        {
            "Shape" when n.GetAttribute("start") is null && n.GetAttribute("end") is null => RankOf(n.Inputs[0]!),
            "Concat" => n.Inputs.Aggregate((int?)0, (acc, i) => acc is null || i is null ? null : acc + StaticLength(i)),
            "Unsqueeze" when RankOf(n.Inputs[0]!) == 0 => 1,
            "Cast" or "Identity" => StaticLength(n.Inputs[0]),
            _ => RankOf(v) == 1 && ShapeOf(v)![0].Value is { } len ? (int)len : null,
        };
    }

    /// <summary>
    /// Contents of a 1-D int64 shape tensor as dims, where each element is a constant or a dim of some value:
    /// constants, Shape(x), Concat of such, Unsqueeze of scalar dims. Null when an element cannot be told.
    /// </summary>
    public Dim[]? SymbolicInts(Value? v)
    {
        if (v is null)
        {
            return null;
        }

        if (ConstInts(v) is { } c)
        {
            return c.Select(x => new Dim(x)).ToArray();
        }

        Node? n = v.Producer;
        switch (n?.OpType)
        {
            case "Shape" when n.GetAttribute("start") is null && n.GetAttribute("end") is null:
                return ShapeOf(n.Inputs[0]!) is { } dims && dims.All(d => d.IsFixed || d.Param is not null) ? dims : null;
            case "Cast" or "Identity":
                return SymbolicInts(n.Inputs[0]);
            case "Unsqueeze" when RankOf(n.Inputs[0]!) == 0:
                return ScalarDim(n.Inputs[0]) is { } d && (d.IsFixed || d.Param is not null) ? [d] : null;
            case "Concat":
            {
                var parts = new List<Dim>();
                foreach (Value? input in n.Inputs)
                {
                    if (SymbolicInts(input) is not { } part)
                    {
                        return null;
                    }

                    parts.AddRange(part);
                }

                return [.. parts];
            }

            default:
                return null;
        }
    }

    /// <summary>The dim a scalar int64 value holds: a constant, or Gather(Shape(x), k) = dim k of x; unknown otherwise.</summary>
    public Dim ScalarDim(Value? v)
    {
        if (ConstInts(v) is [long c])
        {
            return new Dim(c);
        }

        Node? n = v?.Producer;
        if (n is null)
        {
            return default;
        }

        if (n.OpType is "Cast" or "Identity" or "Squeeze" or "Reshape")
        {
            return ScalarDim(n.Inputs[0]);
        }

        if (n.OpType == "Gather" && n.Inputs[0]?.Producer is { OpType: "Shape" } shape && shape.GetAttribute("start") is null
            && ConstInts(n.Inputs[1]) is [long k] && ShapeOf(shape.Inputs[0]!) is { } dims)
        {
            int axis = (int)(k < 0 ? k + dims.Length : k);
            return axis >= 0 && axis < dims.Length ? dims[axis] : default;
        }

        return default;
    }

    /// <summary>Length of a constant slice of an axis; unknown unless the axis size is fixed (or the slice is whole).</summary>
    public static Dim SliceLength(Dim size, long start, long end, long step)
    {
        if (step == 1 && start == 0 && end >= int.MaxValue)
        {
            return size;
        }

        if (size.Value is not { } n || step == 0)
        {
            return default;
        }

        static long Clamp(long v, long n, long lo, long hi) => Math.Clamp(v < 0 ? v + n : v, lo, hi);
        long s = step > 0 ? Clamp(start, n, 0, n) : Clamp(start, n, -1, n - 1);
        long e = step > 0 ? Clamp(end, n, 0, n) : Clamp(end, n, -1, n - 1);
        long count = step > 0 ? (e - s + step - 1) / step : (s - e - step - 1) / -step;
        return new Dim(Math.Max(count, 0));
    }

    /// <summary>
    /// The dim a Reshape's -1 stands for: the input's element count divided by the other target dims, when the symbols
    /// cancel (e.g. [batch, seq, 64] to [batch, seq, 8, -1] gives 8); unknown otherwise.
    /// </summary>
    public static Dim Quotient(Dim[] input, Dim[] others)
    {
        if (input.Any(d => !d.IsFixed && d.Param is null) || others.Any(d => !d.IsFixed && d.Param is null))
        {
            return default;
        }

        var symbols = input.Where(d => d.Param is not null).Select(d => d.Param!).ToList();
        foreach (Dim d in others.Where(d => d.Param is not null))
        {
            if (!symbols.Remove(d.Param!))
            {
                return default;
            }
        }

        long numerator = input.Where(d => d.IsFixed).Aggregate(1L, (a, d) => a * d.Value!.Value);
        long denominator = others.Where(d => d.IsFixed).Aggregate(1L, (a, d) => a * d.Value!.Value);
        if (denominator == 0 || numerator % denominator != 0)
        {
            return default;
        }

        long q = numerator / denominator;
        return symbols.Count switch
        {
            0 => new Dim(q),
            1 when q == 1 => new Dim(symbols[0]),
            _ => default,
        };
    }

    /// <summary>Numpy-style broadcast of shapes; an axis becomes unknown where the sizes cannot be decided.</summary>
    public static Dim[]? Broadcast(List<Dim[]?> shapes)
    {
        if (shapes.Count == 0 || shapes.Any(s => s is null))
        {
            return null;
        }

        int rank = shapes.Max(s => s!.Length);
        var result = new Dim[rank];
        for (int axis = 0; axis < rank; axis++)
        {
            Dim? chosen = null;
            bool unknown = false;
            foreach (Dim[]? s in shapes)
            {
                int i = axis - (rank - s!.Length);
                if (i < 0)
                {
                    continue;
                }

                Dim d = s[i];
                if (d.Value == 1)
                {
                    continue;
                }

                if (chosen is null)
                {
                    chosen = d;
                }
                else if (!SameDim(chosen.Value, d))
                {
                    unknown = true;
                }
            }

            result[axis] = unknown ? default : chosen ?? new Dim(1);
        }

        return result;
    }
}
