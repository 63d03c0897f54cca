using System.CommandLine;
using Onnx.Lora.Formats;
using Onnx.Lora.Exporter.GenAi;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Cli.Commands;

/// <summary>
/// <c>onnx-lora export-adapter MODEL [-o NAME.onnx_adapter] [--peft DIR] [--serving DIR [--adapter NAME=PATH]...
/// [--genai DIR --genai-config CFG [--tokenizer DIR]]]</c>: write a trained adapter for ORT or PEFT, or a serving model
/// with adapter slots plus one .onnx_adapter per adapter (and optionally an ORT GenAI folder).
/// </summary>
internal sealed class ExportAdapterCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("model") { Description = "LoRA model written by inject/train, or a base model (with --serving and --adapter)." };
    private static readonly Option<string?> s_output = new("--output", "-o") { Description = ".onnx_adapter file to write (A [in,r], B [r,out] with the scale folded in)." };
    private static readonly Option<string?> s_peft = new("--peft") { Description = "Folder for a PEFT adapter (adapter_model.safetensors + adapter_config.json)." };
    private static readonly Option<string?> s_servingModel = new("--serving-model") { Description = "Serving model to validate the -o adapter against (names, dtypes, shapes)." };
    private static readonly Option<string?> s_serving = new("--serving") { Description = "Folder for base-with-slots.onnx and NAME.onnx_adapter per adapter." };
    private static readonly Option<string[]> s_adapters = new("--adapter") { Description = "NAME=PATH of an adapter to ship with --serving (PEFT folder, .safetensors, .onnx_adapter or LoRA model); repeatable.", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string?> s_genai = new("--genai") { Description = "Also write an ORT GenAI folder (model, genai_config.json, tokenizer, adapters/) here; needs --serving." };
    private static readonly Option<string?> s_genaiConfig = new("--genai-config") { Description = "genai_config.json of the base model (for --genai)." };
    private static readonly Option<string?> s_baseModel = new("--base-model") { Description = "PEFT base_model_name_or_path for --peft (a Hugging Face id or folder); default: what inject recorded." };
    private static readonly Option<string?> s_tokenizer = new("--tokenizer") { Description = "Folder with tokenizer.json etc. (for --genai; default: the config's folder)." };

    public ExportAdapterCommand() : base("export-adapter", "Export LoRA weights as an .onnx_adapter (ORT / ORT GenAI), a PEFT adapter, or a serving model with adapter slots.")
    {
        MustExist(s_model, "Model");
        MustExist(s_servingModel, "Serving model");
        MustExist(s_genaiConfig, "genai_config");
        MustExist(s_tokenizer, "Tokenizer folder", folderAllowed: true);
        Arguments.Add(s_model);
        Options.Add(s_output);
        Options.Add(s_peft);
        Options.Add(s_servingModel);
        Options.Add(s_serving);
        Options.Add(s_adapters);
        Options.Add(s_genai);
        Options.Add(s_genaiConfig);
        Options.Add(s_tokenizer);
        Options.Add(s_baseModel);
    }

    protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string path = parse.GetValue(s_model)!;
        string? adapterOut = parse.GetValue(s_output), peft = parse.GetValue(s_peft), serving = parse.GetValue(s_serving);
        if (adapterOut is null && peft is null && serving is null)
        {
            throw new UsageException("Give --output NAME.onnx_adapter, --peft DIR and/or --serving DIR.");
        }

        if (adapterOut is not null || peft is not null)
        {
            using Model model = OnnxReader.Load(path);
            LoraManifest manifest = LoraManifest.Read(model) ?? throw new UsageException($"Model '{path}' has no LoRA manifest; --output and --peft export a trained LoRA model's adapter.");
            LoraWeights weights = LoraWeights.FromModel(model, manifest, path);
            if (adapterOut is not null)
            {
                AdapterFile adapter = weights.ToAdapterFile(manifest);
                if (parse.GetValue(s_servingModel) is { } servingPath)
                {
                    using Model servingModel = OnnxReader.Load(servingPath);
                    AdapterValidation.ValidateAgainstModel(adapter, servingModel, adapterOut);
                }

                OnnxAdapterFormat.Write(adapter, adapterOut);
                output.WriteLine($"wrote {adapter.Parameters.Count} tensors → {adapterOut}");
            }

            if (peft is not null)
            {
                PeftAdapter.Export(weights, peft, manifest.ConfigOrDerived(), parse.GetValue(s_baseModel) ?? manifest.Config?.BaseModelNameOrPath ?? BaseModelReference.For(path));
                output.WriteLine($"wrote PEFT adapter → {peft}");
            }
        }

        if (serving is not null)
        {
            var adapters = (parse.GetValue(s_adapters) ?? []).Select(ParseAdapter).ToList();
            ServingExportReport report = ServingExport.Export(path, new ServingExportOptions { OutputFolder = serving, Adapters = adapters });
            output.WriteLine($"wrote serving model with {report.Manifest.Modules.Count} adapter slots → {report.ModelPath}");
            foreach ((string name, string file) in report.AdapterPaths)
            {
                output.WriteLine($"  adapter '{name}' → {file}");
            }

            if (parse.GetValue(s_genai) is { } genai)
            {
                GenAiFolderReport folder = GenAiFolder.Write(new GenAiFolderOptions
                {
                    ModelPath = report.ModelPath,
                    OutputFolder = genai,
                    GenAiConfigPath = parse.GetValue(s_genaiConfig) ?? throw new UsageException("--genai needs --genai-config (the base model's genai_config.json)."),
                    TokenizerFolder = parse.GetValue(s_tokenizer),
                    Adapters = report.AdapterPaths.Select(p => new GenAiAdapter(p.Key, p.Value)).ToList(),
                });
                output.WriteLine($"wrote ORT GenAI folder ({folder.Files.Count} files) → {genai}");
            }
        }
        else if (parse.GetValue(s_genai) is not null)
        {
            throw new UsageException("--genai needs --serving (the GenAI folder holds the serving model).");
        }

        return Task.FromResult(ExitCodes.Success);
    }

    private static ServingAdapter ParseAdapter(string text)
    {
        int eq = text.IndexOf('=', StringComparison.Ordinal);
        return eq > 0 ? new ServingAdapter(text[..eq], text[(eq + 1)..]) : throw new UsageException($"--adapter '{text}' is not NAME=PATH.");
    }
}
