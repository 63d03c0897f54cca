using System.CommandLine;
using System.Globalization;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora merge MODEL -o MERGED [--adapter FILE] [--quantized requantize|float]</c>: fold an adapter into the base
/// weights. MODEL is a LoRA model (its own tensors, or --adapter for a serving model) or a plain base with --adapter
/// (a PEFT folder, .safetensors or .onnx_adapter, matched to the base's layers by module name).
/// </summary>
internal sealed class MergeCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("model") { Description = "LoRA model written by inject/train, a serving model with adapter slots, or a base model (with --adapter)." };
    private static readonly Option<string> s_output = new("--output", "-o") { Description = "Merged model to write (never the input).", Required = true };
    private static readonly Option<string?> s_adapter = new("--adapter") { Description = "Adapter to merge: PEFT folder, .safetensors or .onnx_adapter (required for a base or serving model)." };
    private static readonly Option<string> s_quantized = new("--quantized")
    {
        Description = "MatMulNBits (int4) layers: 'requantize' (same block size, error reported; graph unchanged) or 'float' (replace the node by a float MatMul: exact, but the graph CHANGES).",
        DefaultValueFactory = _ => "requantize",
    };

    private static readonly Option<bool> s_constantsAsInitializers = new("--constants-as-initializers")
    {
        Description = "Store merged weights that the base kept as Constant nodes (paddle2onnx, older tf2onnx) as initializers instead.",
    };

    public MergeCommand() : base("merge", "Merge LoRA weights into the base initializers: the result is the base graph with updated weights.")
    {
        MustExist(s_model, "Model");
        MustExist(s_adapter, "Adapter", folderAllowed: true);
        Arguments.Add(s_model);
        Options.Add(s_output);
        Options.Add(s_adapter);
        s_quantized.AcceptOnlyFromAmong("requantize", "float");
        Options.Add(s_quantized);
        Options.Add(s_constantsAsInitializers);
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string model = parse.GetValue(s_model)!;
        string target = parse.GetValue(s_output)!;
        string? adapter = parse.GetValue(s_adapter);
        var options = new MergeOptions
        {
            Quantized = parse.GetValue(s_quantized) == "float" ? QuantizedMergeMode.FloatCopy : QuantizedMergeMode.Requantize,
            ConstantsAsInitializers = parse.GetValue(s_constantsAsInitializers),
            CancellationToken = cancellationToken,
        };
        // Read once: the manifest decides which merge runs, on the same loaded graph (weights stay on disk until written).
        using Model loaded = OnnxReader.Load(model);
        bool hasManifest = LoraManifest.Read(loaded) is not null;
        if (!hasManifest && adapter is null)
        {
            throw new UsageException($"Model '{model}' has no LoRA adapters; give the adapter to merge with --adapter.");
        }

        MergeReport report = ConsoleProgress.WithBytesBar(output, $"merging → {Path.GetFileName(target)}", progress =>
            hasManifest
                ? LoraMerger.Merge(loaded, model, target, adapter, options with { Progress = progress })
                : BaseModelMerge.Merge(loaded, model, adapter!, target, options with { Progress = progress }));

        output.WriteLine($"merged {report.MergedModules} modules, removed {report.RemovedNodes} LoRA nodes → {target}");
        if (report.OtherPartModules > 0)
        {
            output.WriteLine($"  {report.OtherPartModules} adapter module(s) belong to the other part of this encoder-decoder export: merge the same adapter into that part's file.");
        }

        foreach (QuantizationError q in report.Quantization)
        {
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  re-quantized {q.Module}: max abs error {q.MaxAbs:E3} (max rel {q.MaxRel:E3}, step {q.MaxStep:E3})"));
        }

        if (report.ReplacedNodes.Count > 0)
        {
            output.WriteLine($"  NOTE: the graph changed: {report.ReplacedNodes.Count} MatMulNBits node(s) replaced by float MatMul ({string.Join(", ", report.ReplacedNodes.Take(3))}{(report.ReplacedNodes.Count > 3 ? ", ..." : string.Empty)}).");
        }

        return Task.FromResult(ExitCodes.Success);
    }
}
