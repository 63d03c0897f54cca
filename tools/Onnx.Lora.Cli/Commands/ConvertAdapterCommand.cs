using System.CommandLine;
using Onnx.Lora.Formats;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora convert-adapter OLD.fb -o NEW.onnx_adapter [--genai-config genai_config.json]</c>: convert ORT GenAI's legacy "GAIL" files.</summary>
internal sealed class ConvertAdapterCommand : LoraCommand
{
    private static readonly Argument<string> s_input = new("input") { Description = "Legacy ORT GenAI LoRA parameter file (identifier GAIL) or an .onnx_adapter." };
    private static readonly Option<string> s_output = new("--output", "-o") { Description = ".onnx_adapter file to write.", Required = true };
    private static readonly Option<string?> s_config = new("--genai-config") { Description = "genai_config.json of the target model: check shapes and layer indices against it." };

    public ConvertAdapterCommand() : base("convert-adapter", "Convert a legacy ORT GenAI adapter (GAIL) to the current .onnx_adapter format (TORT), validating it.")
    {
        MustExist(s_input, "Adapter");
        MustExist(s_config, "genai_config");
        Arguments.Add(s_input);
        Options.Add(s_output);
        Options.Add(s_config);
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string input = parse.GetValue(s_input)!;
        AdapterFile adapter = OnnxAdapterFormat.Read(input);
        if (parse.GetValue(s_config) is { } config)
        {
            AdapterValidation.ValidateAgainstGenAiConfig(adapter, config, input);
        }

        OnnxAdapterFormat.Write(adapter with { SourceFormat = AdapterFileFormat.OnnxAdapter }, parse.GetValue(s_output)!);
        output.WriteLine($"converted {adapter.Parameters.Count} tensors ({adapter.SourceFormat}) → {parse.GetValue(s_output)}");
        return Task.FromResult(ExitCodes.Success);
    }
}
