using System.Numerics.Tensors;

namespace Onnx.Lora.Generation;

/// <summary>
/// Picks tokens from logits as <see cref="SamplingOptions"/> say, with its own seeded <see cref="Random"/> (the same
/// seed and logits give the same tokens). Buffers grow to the vocabulary once and are reused for every token.
/// </summary>
public sealed class TokenSampler
{
    private readonly SamplingOptions _options;
    private readonly Random _random;
    private float[] _probabilities = [];
    private float[] _keys = [];
    private int[] _order = [];

    /// <summary>Creates a sampler.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The options are out of range.</exception>
    public TokenSampler(SamplingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        _random = new Random(options.Seed);
    }

    /// <summary>The next token for <paramref name="logits"/> (one position, one entry per vocabulary id).</summary>
    /// <exception cref="ArgumentException"><paramref name="logits"/> is empty.</exception>
    public int Next(ReadOnlySpan<float> logits)
    {
        if (logits.IsEmpty)
        {
            throw new ArgumentException("Logits are empty.", nameof(logits));
        }

        if (_options.IsGreedy)
        {
            return TensorPrimitives.IndexOfMax(logits);
        }

        int vocab = logits.Length;
        if (_order.Length < vocab)
        {
            _probabilities = new float[vocab];
            _keys = new float[vocab];
            _order = new int[vocab];
        }

        Span<float> p = _probabilities.AsSpan(0, vocab);
        Span<float> keys = _keys.AsSpan(0, vocab);
        TensorPrimitives.Divide(logits, _options.Temperature, keys);
        TensorPrimitives.SoftMax(keys, p);

        int k = _options.TopK > 0 ? Math.Min(_options.TopK, vocab) : vocab;
        if (k == vocab && _options.TopP >= 1f)
        {
            // Plain temperature sampling needs no order: walk the distribution in id order.
            return Draw(p);
        }

        // Most likely first: sorting keys = -p ascending carries the ids along. With top-k only the k best are
        // sorted, after a selection pass (a 128k vocabulary with k = 50 sorts 50 entries, not 128k).
        TensorPrimitives.Negate(p, keys);
        for (int i = 0; i < vocab; i++)
        {
            _order[i] = i;
        }

        if (k < vocab)
        {
            SelectSmallest(_keys, _order, vocab, k);
        }

        Array.Sort(_keys, _order, 0, k);

        // Top-k, then the nucleus of the top-k distribution (renormalized): the fewest tokens whose mass reaches top-p.
        double topKMass = 0;
        for (int i = 0; i < k; i++)
        {
            topKMass += p[_order[i]];
        }

        double target = _options.TopP * topKMass;
        double mass = 0;
        int n = 0;
        while (n < k)
        {
            mass += p[_order[n++]];
            if (mass >= target)
            {
                break;
            }
        }

        double r = _random.NextDouble() * mass;
        for (int i = 0; i < n; i++)
        {
            r -= p[_order[i]];
            if (r < 0)
            {
                return _order[i];
            }
        }

        return _order[n - 1];
    }

    private int Draw(ReadOnlySpan<float> p)
    {
        double r = _random.NextDouble() * TensorPrimitives.Sum(p);
        for (int i = 0; i < p.Length; i++)
        {
            r -= p[i];
            if (r < 0)
            {
                return i;
            }
        }

        // Rounding left r ≥ 0 after the last entry: the last token with any mass.
        for (int i = p.Length - 1; i > 0; i--)
        {
            if (p[i] > 0)
            {
                return i;
            }
        }

        return 0;
    }

    // Moves the k smallest keys (with their ids) into [0, k), in no particular order: Hoare-style quickselect with a
    // middle pivot (deterministic, no RNG draws, so sampling stays a function of the seed), O(n) on average.
    private static void SelectSmallest(float[] keys, int[] ids, int n, int k)
    {
        int lo = 0, hi = n - 1;
        while (lo < hi)
        {
            float pivot = keys[lo + ((hi - lo) / 2)];
            int i = lo, j = hi;
            while (i <= j)
            {
                while (keys[i] < pivot)
                {
                    i++;
                }

                while (keys[j] > pivot)
                {
                    j--;
                }

                if (i <= j)
                {
                    (keys[i], keys[j]) = (keys[j], keys[i]);
                    (ids[i], ids[j]) = (ids[j], ids[i]);
                    i++;
                    j--;
                }
            }

            // [lo, j] ≤ pivot ≤ [i, hi]; keep narrowing the side that holds position k - 1.
            if (k - 1 <= j)
            {
                hi = j;
            }
            else if (k - 1 >= i)
            {
                lo = i;
            }
            else
            {
                return;
            }
        }
    }
}
