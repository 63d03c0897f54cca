using System.CommandLine;
using Onnx.Lora.Exporter;
using Onnx.Lora.Exporter.Formats;
using Onnx.Lora.Exporter.Peft;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Rewriter;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora export-adapter LORA_MODEL (-o NAME.onnx_adapter | --peft DIR)</c>: write the trained adapter for ORT or PEFT.</summary>
internal sealed class ExportAdapterCommand : Command
{
    private static readonly Argument<string> s_model = new("model") { Description = "LoRA model written by inject/train (its manifest names the adapted modules)." };
    private static readonly Option<string?> s_output = new("--output", "-o") { Description = ".onnx_adapter file to write (A [in,r], B [r,out] with the scale folded in)." };
    private static readonly Option<string?> s_peft = new("--peft") { Description = "Folder for a PEFT adapter (adapter_model.safetensors + adapter_config.json)." };
    private static readonly Option<string?> s_serving = new("--serving-model") { Description = "Serving model to validate the adapter against (names, dtypes, shapes)." };

    public ExportAdapterCommand() : base("export-adapter", "Export the trained LoRA weights as an .onnx_adapter (ORT / ORT GenAI) or a PEFT adapter.")
    {
        Arguments.Add(s_model);
        Options.Add(s_output);
        Options.Add(s_peft);
        Options.Add(s_serving);
        SetAction(Execute);
    }

    private static int Execute(ParseResult parse) => CommandErrors.Run(() =>
    {
        string path = parse.GetValue(s_model)!;
        using Model model = OnnxReader.Load(path);
        LoraManifest manifest = LoraManifest.Read(model) ?? throw new AdapterMismatchException($"Model '{path}' has no LoRA manifest.");
        LoraWeights weights = LoraWeights.FromModel(model, manifest, path);
        if (parse.GetValue(s_output) is { } output)
        {
            AdapterFile adapter = weights.ToAdapterFile(manifest);
            if (parse.GetValue(s_serving) is { } servingPath)
            {
                using Model serving = OnnxReader.Load(servingPath);
                AdapterValidation.ValidateAgainstModel(adapter, serving, output);
            }

            OnnxAdapterFormat.Write(adapter, output);
            Console.WriteLine($"wrote {adapter.Parameters.Count} tensors → {output}");
        }

        if (parse.GetValue(s_peft) is { } folder)
        {
            PeftAdapter.Export(weights, folder, useRsLora: manifest.Modules.Any(m => m.UseRsLora), dropout: manifest.Dropout);
            Console.WriteLine($"wrote PEFT adapter → {folder}");
        }

        if (parse.GetValue(s_output) is null && parse.GetValue(s_peft) is null)
        {
            throw new AdapterMismatchException("Give --output NAME.onnx_adapter and/or --peft DIR.");
        }
    });
}
