using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Onnx.Lora.Ir;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Models.Conversion;

/// <summary>The 7-int32 header of a llama2.c checkpoint.</summary>
/// <param name="Dim">Model dimension.</param>
/// <param name="HiddenDim">MLP hidden size.</param>
/// <param name="Layers">Decoder layers.</param>
/// <param name="Heads">Query heads.</param>
/// <param name="KvHeads">Key/value heads.</param>
/// <param name="Vocab">Vocabulary size (the header stores it negated when the classifier is untied).</param>
/// <param name="SeqLen">Longest sequence.</param>
/// <param name="SharedClassifier">True when the classifier is the token embedding.</param>
public sealed record Llama2cHeader(int Dim, int HiddenDim, int Layers, int Heads, int KvHeads, int Vocab, int SeqLen, bool SharedClassifier)
{
    /// <summary>Header size in bytes.</summary>
    public const int ByteCount = 7 * sizeof(int);

    /// <summary>Size of one head.</summary>
    public int HeadSize => Dim / Heads;

    /// <summary>Total key/value width.</summary>
    public int KvDim => KvHeads * HeadSize;

    /// <summary>Number of float32 values that follow the header, in llama2.c order.</summary>
    public long FloatCount =>
        ((long)Vocab * Dim) + ((long)Layers * Dim) + ((long)Layers * Dim * Dim) + (2L * Layers * KvDim * Dim) + ((long)Layers * Dim * Dim) +
        ((long)Layers * Dim) + (3L * Layers * Dim * HiddenDim) + Dim + ((long)SeqLen * HeadSize) + (SharedClassifier ? 0 : (long)Vocab * Dim);

    /// <summary>
    /// The matching Llama config in Hugging Face's layout: rotate-half RoPE on q/k rows permuted as HF's
    /// convert_llama_weights_to_hf.py permutes them (the same function as run.c's interleaved RoPE on the original
    /// rows), RMSNorm eps 1e-5, theta 10000.
    /// </summary>
    public LlamaConfig ToConfig() => new()
    {
        Layers = Layers, Hidden = Dim, Heads = Heads, KvHeads = KvHeads, Intermediate = HiddenDim, Vocab = Vocab, MaxPositions = SeqLen,
        RmsNormEps = 1e-5f, RopeTheta = 10000f, Rope = RopeStyle.RotateHalf, TiedEmbeddings = SharedClassifier,
    };
}

/// <summary>
/// A llama2.c checkpoint (run.c's format) read as a weight source: each weight is read from the file when the builder
/// asks for it and transposed from torch's [out, in] to MatMul's [in, out]. wq and wk come out in Hugging Face's row
/// order (<see cref="PermuteForRotateHalf"/>), so the model, and every adapter trained on it, matches HF's checkpoint.
/// </summary>
public sealed class Llama2cCheckpoint : IWeightSource
{
    private readonly string _path;
    private readonly Dictionary<string, (long Offset, int Rows, int Cols, bool Transpose, int PermuteHeads)> _layout = new(StringComparer.Ordinal);

    private Llama2cCheckpoint(string path, Llama2cHeader header)
    {
        _path = path;
        Header = header;
        BuildLayout();
    }

    /// <summary>The checkpoint's header.</summary>
    public Llama2cHeader Header { get; }

    /// <summary>Opens <paramref name="path"/> and validates its header and size.</summary>
    /// <exception cref="OnnxSerializationException">The file is missing, too short, too long, or its header is not a llama2.c header.</exception>
    public static Llama2cCheckpoint Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new OnnxSerializationException($"llama2.c checkpoint '{path}' does not exist.");
        }

        long length = InputFile.Check(path, "llama2.c checkpoint", long.MaxValue, m => new OnnxSerializationException(m)).Size;
        if (length < Llama2cHeader.ByteCount)
        {
            throw new OnnxSerializationException($"llama2.c checkpoint '{path}' is {length} bytes; expected at least the {Llama2cHeader.ByteCount}-byte header (7 int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len).");
        }

        Span<byte> raw = stackalloc byte[Llama2cHeader.ByteCount];
        using (var stream = File.OpenRead(path))
        {
            stream.ReadExactly(raw);
        }

        Span<int> h = stackalloc int[7];
        for (int i = 0; i < 7; i++)
        {
            h[i] = BinaryPrimitives.ReadInt32LittleEndian(raw[(i * 4)..]);
        }

        var header = new Llama2cHeader(h[0], h[1], h[2], h[3], h[4], Math.Abs(h[5]), h[6], h[5] > 0);
        string fields = $"dim={h[0]}, hidden_dim={h[1]}, n_layers={h[2]}, n_heads={h[3]}, n_kv_heads={h[4]}, vocab_size={h[5]}, seq_len={h[6]}";
        const int Sane = 1 << 20;
        bool positive = h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] > 0 && h[4] > 0 && h[5] != 0 && h[5] != int.MinValue && h[6] > 0;
        if (!positive || h[0] > Sane || h[1] > Sane || h[2] > 4096 || h[6] > Sane || Math.Abs(h[5]) > 1 << 24)
        {
            throw new OnnxSerializationException($"llama2.c checkpoint '{path}' has an invalid header ({fields}); expected positive sizes (vocab_size may be negative for an untied classifier).");
        }

        if (header.Dim % header.Heads != 0 || header.HeadSize % 2 != 0 || header.Heads % header.KvHeads != 0)
        {
            throw new OnnxSerializationException($"llama2.c checkpoint '{path}' has an invalid header ({fields}); expected dim divisible by n_heads into an even head size, and n_heads a multiple of n_kv_heads.");
        }

        long expected = Llama2cHeader.ByteCount + (header.FloatCount * sizeof(float));
        if (length != expected)
        {
            string what = length < expected ? "is truncated" : "has trailing bytes";
            throw new OnnxSerializationException($"llama2.c checkpoint '{path}' {what}: it is {length:N0} bytes; the header ({fields}) implies {expected:N0} bytes (28-byte header + {header.FloatCount:N0} float32 weights).");
        }

        return new Llama2cCheckpoint(Path.GetFullPath(path), header);
    }

    /// <inheritdoc />
    /// <exception cref="OnnxSerializationException">The checkpoint has no weight under that key or with those dims.</exception>
    public ReadOnlyMemory<byte> GetFloat32(WeightRequest request)
    {
        if (!_layout.TryGetValue(request.Key, out var entry))
        {
            throw new OnnxSerializationException($"llama2.c checkpoint '{_path}' has no weight '{request.Key}'.");
        }

        long count = (long)entry.Rows * entry.Cols;
        if (request.ElementCount != count)
        {
            throw new OnnxSerializationException($"Weight '{request.Key}' of '{_path}' has {count} values; [{string.Join(",", request.Dims)}] was asked for.");
        }

        var values = new float[count];
        using (var handle = File.OpenHandle(_path))
        {
            int read = RandomAccess.Read(handle, MemoryMarshal.AsBytes(values.AsSpan()), entry.Offset);
            if (read != count * sizeof(float))
            {
                throw new OnnxSerializationException($"llama2.c checkpoint '{_path}' ended early while reading '{request.Key}'.");
            }
        }

        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("llama2.c checkpoints are little-endian; big-endian hosts are not supported.");
        }

        if (entry.PermuteHeads > 0)
        {
            values = PermuteForRotateHalf(values, entry.PermuteHeads, entry.Rows, entry.Cols);
        }

        float[] result = entry.Transpose ? BuilderHelpers.Transpose(values, entry.Rows, entry.Cols) : values;
        return MemoryMarshal.AsBytes(result.AsSpan()).ToArray();
    }

    /// <summary>
    /// HF's permute for wq/wk ([rows = heads·d, cols], torch layout): within each head, row 2i+j moves to j·d/2 + i,
    /// i.e. <c>w.view(heads, d/2, 2, cols).transpose(1, 2).reshape(rows, cols)</c>. Interleaved RoPE on the original rows
    /// equals rotate-half RoPE on the permuted ones.
    /// </summary>
    public static float[] PermuteForRotateHalf(float[] w, int heads, int rows, int cols)
    {
        ArgumentNullException.ThrowIfNull(w);
        int d = rows / heads, half = d / 2;
        var result = new float[w.Length];
        for (int h = 0; h < heads; h++)
        {
            for (int i = 0; i < half; i++)
            {
                for (int j = 0; j < 2; j++)
                {
                    Array.Copy(w, ((long)(h * d) + (2 * i) + j) * cols, result, ((long)(h * d) + (j * half) + i) * cols, cols);
                }
            }
        }

        return result;
    }

    private void BuildLayout()
    {
        Llama2cHeader h = Header;
        long offset = Llama2cHeader.ByteCount;

        // Weights of all layers are stored per kind: every layer's wq, then every layer's wk, ...
        void Add(string key, int rows, int cols, bool transpose, int permuteHeads = 0)
        {
            _layout[key] = (offset, rows, cols, transpose, permuteHeads);
            offset += (long)rows * cols * sizeof(float);
        }

        void PerLayer(string suffix, int rows, int cols, bool transpose, int permuteHeads = 0)
        {
            for (int l = 0; l < h.Layers; l++)
            {
                Add($"model.layers.{l}.{suffix}", rows, cols, transpose, permuteHeads);
            }
        }

        Add("model.embed_tokens.weight", h.Vocab, h.Dim, false);
        PerLayer("input_layernorm.weight", 1, h.Dim, false);
        PerLayer("self_attn.q_proj.weight", h.Dim, h.Dim, true, h.Heads);
        PerLayer("self_attn.k_proj.weight", h.KvDim, h.Dim, true, h.KvHeads);
        PerLayer("self_attn.v_proj.weight", h.KvDim, h.Dim, true);
        PerLayer("self_attn.o_proj.weight", h.Dim, h.Dim, true);
        PerLayer("post_attention_layernorm.weight", 1, h.Dim, false);
        PerLayer("mlp.gate_proj.weight", h.HiddenDim, h.Dim, true);
        PerLayer("mlp.down_proj.weight", h.Dim, h.HiddenDim, true);
        PerLayer("mlp.up_proj.weight", h.HiddenDim, h.Dim, true);
        Add("model.norm.weight", 1, h.Dim, false);
        offset += (long)h.SeqLen * h.HeadSize * sizeof(float); // freq_cis_real and freq_cis_imag: recomputed by the builder.
        if (!h.SharedClassifier)
        {
            Add("lm_head.weight", h.Vocab, h.Dim, true);
        }
    }
}

/// <summary>Converts llama2.c checkpoints to torch.onnx-style ONNX through <see cref="TorchLlamaBuilder"/>.</summary>
public static class Llama2cConverter
{
    /// <summary>Reads <paramref name="checkpointPath"/> and returns the torch-style model.</summary>
    /// <param name="checkpointPath">The llama2.c .bin file.</param>
    /// <param name="naming">Initializer naming (anonymous as torch exports, or module names).</param>
    /// <param name="kvCache">True (default) for the decoder-with-past form (past_key_values / present, position_ids),
    /// false for the plain form that takes whole sequences only (<see cref="LlamaConfig.KvCache"/>).</param>
    /// <exception cref="OnnxSerializationException">The checkpoint is missing, malformed or truncated.</exception>
    public static Model Convert(string checkpointPath, InitializerNaming naming = InitializerNaming.Anonymous, bool kvCache = true)
    {
        Llama2cCheckpoint checkpoint = Llama2cCheckpoint.Open(checkpointPath);
        return TorchLlamaBuilder.Build(checkpoint.Header.ToConfig() with { Naming = naming, KvCache = kvCache }, checkpoint);
    }

    /// <summary>Converts <paramref name="checkpointPath"/> and saves the model atomically to <paramref name="onnxPath"/>.</summary>
    /// <param name="checkpointPath">The llama2.c .bin file.</param>
    /// <param name="onnxPath">Destination .onnx file.</param>
    /// <param name="naming">Initializer naming.</param>
    /// <param name="options">Save options (e.g. external data); default inline for small models.</param>
    /// <param name="kvCache">True (default) for the decoder-with-past form, false for the plain form.</param>
    /// <exception cref="OnnxSerializationException">The checkpoint is malformed, or the model cannot be written (nothing is left at the destination).</exception>
    public static void ConvertToFile(string checkpointPath, string onnxPath, InitializerNaming naming = InitializerNaming.Anonymous, Onnx.Lora.Ir.Serialization.SaveOptions? options = null, bool kvCache = true)
    {
        using Model model = Convert(checkpointPath, naming, kvCache);
        Onnx.Lora.Ir.Serialization.OnnxWriter.Save(model, onnxPath, options);
    }
}
