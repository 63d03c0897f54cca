using System.CommandLine;
using Onnx.Lora.Exporter.Merge;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora merge LORA_MODEL -o MERGED [--adapter FILE.onnx_adapter]</c>: fold the adapter into the base weights.</summary>
internal sealed class MergeCommand : Command
{
    private static readonly Argument<string> s_model = new("model") { Description = "LoRA model written by inject/train (or a serving model with adapter slots, with --adapter)." };
    private static readonly Option<string> s_output = new("--output", "-o") { Description = "Merged model to write (never the input).", Required = true };
    private static readonly Option<string?> s_adapter = new("--adapter") { Description = ".onnx_adapter file to merge instead of the model's own LoRA tensors." };

    public MergeCommand() : base("merge", "Merge LoRA weights into the base initializers: the result is the base graph with updated weights.")
    {
        Arguments.Add(s_model);
        Options.Add(s_output);
        Options.Add(s_adapter);
        SetAction(Execute);
    }

    private static int Execute(ParseResult parse) => CommandErrors.Run(() =>
    {
        MergeReport report = LoraMerger.Merge(parse.GetValue(s_model)!, parse.GetValue(s_output)!, parse.GetValue(s_adapter));
        Console.WriteLine($"merged {report.MergedModules} modules, removed {report.RemovedNodes} LoRA nodes → {parse.GetValue(s_output)}");
    });
}
