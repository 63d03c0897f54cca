using System.CommandLine;
using System.Globalization;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.Combine;
using Onnx.Lora.Formats.Peft;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora combine A B ... --weights 0.7,0.3 --type cat|linear|svd [--rank K] -o OUT</c>: combine adapters into one,
/// as PEFT's add_weighted_adapter. OUT ending in .onnx_adapter gets an ORT adapter, anything else a PEFT folder.
/// </summary>
internal sealed class CombineCommand : LoraCommand
{
    private static readonly Argument<string[]> s_adapters = new("adapters") { Description = "Adapters: PEFT folders, .safetensors or .onnx_adapter files.", Arity = ArgumentArity.OneOrMore };
    private static readonly Option<string?> s_weights = new("--weights") { Description = "Comma-separated weights, one per adapter (default 1 each)." };
    private static readonly Option<string> s_type = new("--type") { Description = "cat (exact, rank Σr), linear (PEFT: √(w·scale) on A and B; equal ranks; keeps cross terms), svd (exact sum truncated to --rank).", DefaultValueFactory = _ => "cat" };
    private static readonly Option<int?> s_rank = new("--rank") { Description = "Target rank for svd (default: the largest input rank)." };
    private static readonly Option<string> s_output = new("--output", "-o") { Description = "NAME.onnx_adapter, or a folder for a PEFT adapter.", Required = true };

    public CombineCommand() : base("combine", "Combine several LoRA adapters into one (cat / linear / svd, as PEFT's add_weighted_adapter).")
    {
        MustExist(s_adapters, "Adapter", folderAllowed: true);
        Arguments.Add(s_adapters);
        Options.Add(s_weights);
        s_type.AcceptOnlyFromAmong("cat", "linear", "svd");
        Options.Add(s_type);
        Options.Add(s_rank);
        Options.Add(s_output);
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string[] paths = parse.GetValue(s_adapters)!;
        double[] weights = ParseWeights(parse.GetValue(s_weights), paths.Length);
        CombinationType type = parse.GetValue(s_type) switch { "linear" => CombinationType.Linear, "svd" => CombinationType.Svd, _ => CombinationType.Cat };
        var inputs = paths.Select((p, i) => new WeightedAdapter(p, AdapterLoader.Load(p), weights[i])).ToList();
        CombineResult result = AdapterCombiner.Combine(inputs, type, parse.GetValue(s_rank));
        string target = parse.GetValue(s_output)!;
        if (target.EndsWith(OnnxAdapterFormat.Extension, StringComparison.OrdinalIgnoreCase))
        {
            OnnxAdapterFormat.Write(AdapterLoader.ToNamedAdapter(result.Weights), target);
        }
        else
        {
            Directory.CreateDirectory(target);
            PeftAdapter.Export(result.Weights, target);
        }

        output.WriteLine($"combined {paths.Length} adapters ({type}) into {result.Weights.Modules.Count} modules → {target}");
        if (type == CombinationType.Svd)
        {
            CombinedModuleReport worst = result.Modules.MaxBy(m => m.DroppedFrobenius)!;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  largest truncation error ‖ΔW − ΔW_r‖_F = {worst.DroppedFrobenius:E3} ({worst.Module}, rank {worst.Rank})"));
        }

        return Task.FromResult(ExitCodes.Success);
    }

    private static double[] ParseWeights(string? text, int count)
    {
        if (text is null)
        {
            return Enumerable.Repeat(1.0, count).ToArray();
        }

        string[] parts = text.Split(',', StringSplitOptions.TrimEntries);
        var values = new double[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!double.TryParse(parts[i], NumberStyles.Float, CultureInfo.InvariantCulture, out values[i]))
            {
                throw new UsageException($"--weights '{text}': '{parts[i]}' is not a number.");
            }
        }

        return values.Length == count ? values : throw new UsageException($"--weights gives {values.Length} weights for {count} adapters.");
    }
}
