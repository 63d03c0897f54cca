using System.CommandLine;
using Onnx.Lora.Models.Builders;
using Onnx.Lora.Models.Conversion;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora convert-llama2c CHECKPOINT -o OUT.onnx</c>: a llama2.c checkpoint as a torch.onnx-style Llama
/// with a KV cache (Optimum's decoder-with-past inputs and outputs), or without one (<c>--no-kv-cache</c>).</summary>
internal sealed class ConvertLlama2cCommand : LoraCommand
{
    private static readonly Argument<string> s_checkpoint = new("CHECKPOINT") { Description = "llama2.c checkpoint (.bin: 7-int32 header, then fp32 weights)." };
    private static readonly Option<string> s_output = new("--output", "-o") { Description = "Output .onnx path.", Required = true };
    private static readonly Option<bool> s_noKvCache = new("--no-kv-cache") { Description = "Emit the plain form (input_ids, attention_mask → logits) without past_key_values / present." };
    private static readonly Option<bool> s_named = new("--named-weights") { Description = "Name initializers model.layers.N.self_attn.q_proj.weight instead of torch's anonymous onnx::MatMul_N." };

    public ConvertLlama2cCommand() : base("convert-llama2c", "Convert a llama2.c checkpoint (e.g. the embedded TinyStories model) to a torch.onnx-style Llama ONNX model.")
    {
        MustExist(s_checkpoint, "llama2.c checkpoint");
        Arguments.Add(s_checkpoint);
        Options.Add(s_output);
        Options.Add(s_named);
        Options.Add(s_noKvCache);
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string checkpoint = parse.GetValue(s_checkpoint)!;
        string target = parse.GetValue(s_output)!;
        InitializerNaming naming = parse.GetValue(s_named) ? InitializerNaming.Named : InitializerNaming.Anonymous;
        Llama2cConverter.ConvertToFile(checkpoint, target, naming, new Onnx.Lora.Ir.Serialization.SaveOptions { CancellationToken = cancellationToken }, kvCache: !parse.GetValue(s_noKvCache));
        await output.WriteLineAsync($"wrote {target}").ConfigureAwait(false);
        return ExitCodes.Success;
    }
}
