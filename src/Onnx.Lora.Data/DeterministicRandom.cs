namespace Onnx.Lora.Data;

/// <summary>
/// xoshiro256** generator whose whole state is four 64-bit words, so a checkpoint can store it and a resumed run
/// draws exactly the numbers the uninterrupted run would have drawn (System.Random's state is not exposed).
/// </summary>
public sealed class DeterministicRandom
{
    private ulong _s0, _s1, _s2, _s3;

    /// <summary>Seeds the state with SplitMix64 of <paramref name="seed"/> (never all-zero).</summary>
    public DeterministicRandom(long seed)
    {
        ulong x = (ulong)seed;
        _s0 = SplitMix(ref x);
        _s1 = SplitMix(ref x);
        _s2 = SplitMix(ref x);
        _s3 = SplitMix(ref x);
    }

    /// <summary>Restores a generator from <see cref="GetState"/>.</summary>
    /// <exception cref="ArgumentException">The state is not four words, or all zero.</exception>
    public DeterministicRandom(IReadOnlyList<ulong> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Count != 4 || state.All(s => s == 0))
        {
            throw new ArgumentException("A xoshiro256** state is four words, not all zero.", nameof(state));
        }

        (_s0, _s1, _s2, _s3) = (state[0], state[1], state[2], state[3]);
    }

    /// <summary>The four state words.</summary>
    public ulong[] GetState() => [_s0, _s1, _s2, _s3];

    /// <summary>Next 64 random bits.</summary>
    public ulong NextUInt64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>Uniform integer in [0, <paramref name="maxExclusive"/>) without modulo bias (Lemire's method).</summary>
    public int NextInt(int maxExclusive)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxExclusive);
        ulong bound = (ulong)maxExclusive;
        UInt128 m = (UInt128)NextUInt64() * bound;
        ulong low = (ulong)m;
        if (low < bound)
        {
            ulong threshold = (0UL - bound) % bound;
            while (low < threshold)
            {
                m = (UInt128)NextUInt64() * bound;
                low = (ulong)m;
            }
        }

        return (int)(m >> 64);
    }

    /// <summary>Uniform float in [0, 1) with 24 random bits.</summary>
    public float NextSingle() => (NextUInt64() >> 40) * (1.0f / (1 << 24));

    /// <summary>Fisher–Yates shuffle of <paramref name="items"/> in place.</summary>
    public void Shuffle<T>(Span<T> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    private static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
