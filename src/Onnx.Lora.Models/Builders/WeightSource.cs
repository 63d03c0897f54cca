using System.Runtime.InteropServices;

namespace Onnx.Lora.Models.Builders;

/// <summary>What a weight is for; random sources use it to pick a sensible distribution.</summary>
public enum WeightRole
{
    /// <summary>A linear layer weight in MatMul layout [in, out].</summary>
    Linear,

    /// <summary>An embedding table [rows, hidden].</summary>
    Embedding,

    /// <summary>A normalization scale (gamma), around 1.</summary>
    NormScale,

    /// <summary>A bias or normalization shift (beta), around 0.</summary>
    Bias,
}

/// <summary>
/// One weight a builder asks for: a canonical Hugging Face style key (e.g. <c>model.layers.0.self_attn.q_proj.weight</c>),
/// its role, and its dims. Linear weights are always asked for in MatMul layout [in, out].
/// </summary>
/// <param name="Key">Canonical key; the same key means the same weight in every builder.</param>
/// <param name="Role">What the weight is for.</param>
/// <param name="Dims">Dims of the float32 tensor wanted.</param>
public readonly record struct WeightRequest(string Key, WeightRole Role, long[] Dims)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Dims.Aggregate(1L, (a, d) => checked(a * d));
}

/// <summary>Supplies float32 weights to the model builders.</summary>
public interface IWeightSource
{
    /// <summary>The little-endian float32 bytes of the requested weight (element count × 4 bytes).</summary>
    ReadOnlyMemory<byte> GetFloat32(WeightRequest request);
}

/// <summary>
/// Seeded random weights. Each weight is drawn from its own generator seeded by (seed, key), so a weight does not
/// depend on the order builders ask for them: two builders asking for the same key get the same values.
/// </summary>
/// <param name="seed">Base seed.</param>
public sealed class RandomWeightSource(int seed) : IWeightSource
{
    /// <summary>Base seed.</summary>
    public int Seed { get; } = seed;

    /// <inheritdoc />
    public ReadOnlyMemory<byte> GetFloat32(WeightRequest request) => MemoryMarshal.AsBytes(Floats(request).AsSpan()).ToArray();

    /// <summary>The requested weight as floats.</summary>
    public float[] Floats(WeightRequest request)
    {
        var rng = new Random(Seed ^ StableHash(request.Key));
        var values = new float[request.ElementCount];

        // Linear weights ~ U(-1,1)/sqrt(in) keep activations O(1) through many layers, as default inits do.
        float scale = request.Role switch
        {
            WeightRole.Linear => 1f / MathF.Sqrt(request.Dims[0]),
            WeightRole.Embedding => 1f,
            WeightRole.NormScale => 0.1f,
            _ => 0.05f,
        };
        float offset = request.Role == WeightRole.NormScale ? 1f : 0f;
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = offset + (float)((rng.NextDouble() * 2) - 1) * scale;
        }

        return values;
    }

    // NOTE: string.GetHashCode is randomized per process; FNV-1a keeps seeds stable across runs.
    private static int StableHash(string key)
    {
        uint hash = 2166136261;
        foreach (char c in key)
        {
            hash = (hash ^ c) * 16777619;
        }

        return (int)hash;
    }
}

/// <summary>
/// All-zero weights that share one buffer (no allocation per tensor), for benchmarks that need the shape of a large
/// model but not its values. Norm scales are zero too, so the model computes nothing useful.
/// </summary>
public sealed class ZeroWeightSource : IWeightSource
{
    private byte[] _zeros = [];

    /// <inheritdoc />
    public ReadOnlyMemory<byte> GetFloat32(WeightRequest request)
    {
        long bytes = checked(request.ElementCount * 4);
        if (_zeros.Length < bytes)
        {
            _zeros = new byte[bytes];
        }

        return _zeros.AsMemory(0, (int)bytes);
    }
}
