namespace Onnx.Lora;

/// <summary>A linear layer LoRA can target.</summary>
/// <param name="Module">PEFT module name, e.g. <c>model.layers.0.self_attn.q_proj</c>.</param>
/// <param name="Op">The ONNX op that computes it (MatMul, Gemm, MatMulNBits, ...).</param>
/// <param name="InFeatures">Input features.</param>
/// <param name="OutFeatures">Output features.</param>
/// <param name="Quantized">True for a quantized weight (e.g. int4 MatMulNBits).</param>
/// <param name="IsOutputHead">True for the output head (lm_head): chosen only by name, as PEFT's all-linear leaves it out.</param>
public sealed record LinearLayer(string Module, string Op, long InFeatures, long OutFeatures, bool Quantized, bool IsOutputHead);

/// <summary>A module that carries a LoRA branch.</summary>
/// <param name="Module">PEFT module name.</param>
/// <param name="InFeatures">Input features.</param>
/// <param name="OutFeatures">Output features.</param>
/// <param name="Rank">LoRA rank r.</param>
/// <param name="Alpha">LoRA alpha.</param>
public sealed record AdaptedModule(string Module, long InFeatures, long OutFeatures, int Rank, double Alpha);

/// <summary>What <see cref="LoraModel.Inject"/> did, in PEFT's <c>print_trainable_parameters</c> terms.</summary>
/// <param name="Modules">The adapted modules, in graph order.</param>
/// <param name="TrainableParameters">LoRA parameters added (the ones training updates).</param>
/// <param name="AllParameters">Base parameters plus <paramref name="TrainableParameters"/>.</param>
public sealed record InjectionResult(IReadOnlyList<AdaptedModule> Modules, long TrainableParameters, long AllParameters);
