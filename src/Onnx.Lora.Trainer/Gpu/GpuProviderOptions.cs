namespace Onnx.Lora.Trainer.Gpu;

/// <summary>
/// Settings of the CUDA and TensorRT execution providers. The defaults favour reproducible fp32 results over the last
/// few percent of speed: TF32 off (fp32 GEMMs as fp32, as PyTorch does by default for matmuls), ORT's deterministic
/// kernels on, and an arena that grows by what is asked rather than by powers of two (peak memory close to need).
/// </summary>
public sealed record GpuProviderOptions
{
    /// <summary>Ask ORT for deterministic kernels (<c>SetDeterministicCompute</c>) and cuDNN's default (deterministic) algorithm choice.</summary>
    public bool Deterministic { get; init; } = true;

    /// <summary>Let fp32 MatMul/Conv run on TF32 tensor cores (about 10 mantissa bits); off keeps fp32 parity with the CPU.</summary>
    public bool UseTf32 { get; init; }

    /// <summary>Folder for TensorRT engine and timing caches (null = no cache: every start rebuilds the engines).</summary>
    public string? TensorRtCacheFolder { get; init; }

    /// <summary>Let TensorRT pick fp16 kernels for fp32 layers.</summary>
    public bool TensorRtFp16 { get; init; }

    /// <summary>The CUDA provider options as ORT's key/value pairs.</summary>
    public Dictionary<string, string> CudaProviderOptions(int deviceId) => new(StringComparer.Ordinal)
    {
        ["device_id"] = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["use_tf32"] = UseTf32 ? "1" : "0",
        // EXHAUSTIVE (ORT's default) benchmarks algorithms per shape and may pick a non-deterministic one.
        ["cudnn_conv_algo_search"] = Deterministic ? "DEFAULT" : "EXHAUSTIVE",
        ["arena_extend_strategy"] = "kSameAsRequested",
        ["do_copy_in_default_stream"] = "1",
    };

    /// <summary>The TensorRT provider options as ORT's key/value pairs.</summary>
    public Dictionary<string, string> TensorRtProviderOptions(int deviceId)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["device_id"] = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["trt_fp16_enable"] = TensorRtFp16 ? "1" : "0",
        };
        if (TensorRtCacheFolder is { } folder)
        {
            // Engines are built per input shape: without a cache a training run pays that build at every start.
            string full = Path.GetFullPath(folder);
            Directory.CreateDirectory(full);
            options["trt_engine_cache_enable"] = "1";
            options["trt_engine_cache_path"] = full;
            options["trt_timing_cache_enable"] = "1";
            options["trt_timing_cache_path"] = full;
        }

        return options;
    }
}
