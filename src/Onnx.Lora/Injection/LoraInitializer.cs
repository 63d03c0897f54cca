namespace Onnx.Lora.Injection;

/// <summary>
/// Initial values of A [in, r] (MatMul layout). Each module draws from its own generator seeded by the options'
/// seed and the module name, so a module's A does not depend on which other modules were selected.
/// </summary>
public static class LoraInitializer
{
    /// <summary>A generator for <paramref name="module"/> under <paramref name="seed"/>.</summary>
    public static Random RandomFor(int seed, string module)
    {
        ArgumentNullException.ThrowIfNull(module);

        // FNV-1a: string.GetHashCode is randomized per process, which would break reproducibility.
        uint hash = 2166136261;
        foreach (char c in module)
        {
            hash = (hash ^ c) * 16777619;
        }

        return new Random(unchecked((int)(hash ^ (uint)seed)));
    }

    /// <summary>
    /// Fills A [in, r] as PEFT does: kaiming_uniform_(a=√5) on torch's A [r, in] has fan_in = in and bound
    /// gain·√(3/fan_in) with gain = √(2/(1+a²)) = √(1/3), i.e. U(−1/√in, 1/√in); Gaussian is N(0, 1/r).
    /// </summary>
    /// <param name="init">KaimingUniform or Gaussian.</param>
    /// <param name="inFeatures">in.</param>
    /// <param name="rank">r.</param>
    /// <param name="random">The module's generator.</param>
    /// <param name="destination">in·r values, row-major [in, r].</param>
    public static void FillA(LoraInit init, long inFeatures, int rank, Random random, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(random);
        ArgumentOutOfRangeException.ThrowIfNotEqual(destination.Length, checked((int)(inFeatures * rank)));
        switch (init)
        {
            case LoraInit.KaimingUniform:
                double bound = 1.0 / Math.Sqrt(inFeatures);
                for (int i = 0; i < destination.Length; i++)
                {
                    destination[i] = (float)((random.NextDouble() * 2 - 1) * bound);
                }

                break;
            case LoraInit.Gaussian:
                double std = 1.0 / rank;
                for (int i = 0; i < destination.Length; i++)
                {
                    // Box–Muller; 1 - NextDouble() keeps the log argument in (0, 1].
                    double u1 = 1.0 - random.NextDouble();
                    double u2 = random.NextDouble();
                    destination[i] = (float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
                }

                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(init), init, "PiSSA initializes A and B together; see PissaInitializer.");
        }
    }
}
