// An ORT GenAI model folder: genai_config.json, the decoder model (+ its external data), the tokenizer files, and the
// adapters as adapters/NAME.onnx_adapter, loaded at run time with Adapters.LoadAdapter(path, NAME) and activated per
// generator with SetActiveAdapter(adapters, NAME).
// NOTE: ORT GenAI's 2024 test configs listed adapters under a root "adapters" key; today's genai_config parser throws
// on unknown root objects (only model/search/engine... are accepted), so that key is removed, never written.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Exporter.GenAi;

/// <summary>One adapter to ship in the folder.</summary>
/// <param name="Name">Adapter name (file name without extension; what the application passes to SetActiveAdapter).</param>
/// <param name="Path">An .onnx_adapter (or legacy GenAI) file.</param>
public sealed record GenAiAdapter(string Name, string Path);

/// <summary>What to put in a GenAI folder.</summary>
public sealed record GenAiFolderOptions
{
    /// <summary>The decoder: a serving model with adapter slots (or a merged model, with no adapters).</summary>
    public required string ModelPath { get; init; }

    /// <summary>The folder to create; it must not exist or be empty.</summary>
    public required string OutputFolder { get; init; }

    /// <summary>The base model's genai_config.json; default: genai_config.json beside <see cref="ModelPath"/>.</summary>
    public string? GenAiConfigPath { get; init; }

    /// <summary>Folder holding tokenizer.json / tokenizer_config.json...; default: the config's folder.</summary>
    public string? TokenizerFolder { get; init; }

    /// <summary>Adapters to validate and copy into adapters/.</summary>
    public IReadOnlyList<GenAiAdapter> Adapters { get; init; } = [];

    /// <summary>File name of the decoder in the folder.</summary>
    public string ModelFileName { get; init; } = "model.onnx";
}

/// <summary>The files written, relative to the folder.</summary>
/// <param name="Files">Every file written.</param>
public sealed record GenAiFolderReport(IReadOnlyList<string> Files);

/// <summary>Writes ORT GenAI model folders.</summary>
public static class GenAiFolder
{
    /// <summary>Folder of the adapters inside a GenAI folder.</summary>
    public const string AdaptersFolder = "adapters";

    /// <summary>Tokenizer files GenAI (and the HF tokenizer it mirrors) reads, copied when present.</summary>
    public static readonly IReadOnlyList<string> TokenizerFiles =
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json"];

    /// <summary>
    /// Validates everything first (config against the model's inputs and outputs, each adapter against the model and
    /// the config, the tokenizer present), then writes the folder into a temporary sibling and renames it into place,
    /// so a failure leaves no partial folder.
    /// </summary>
    /// <exception cref="AdapterMismatchException">The config names inputs or outputs the model lacks, or an adapter does not fit.</exception>
    /// <exception cref="AdapterFormatException">A file is missing or malformed, or the output folder is not empty.</exception>
    public static GenAiFolderReport Write(GenAiFolderOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string configPath = options.GenAiConfigPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(options.ModelPath))!, "genai_config.json");
        string tokenizerFolder = options.TokenizerFolder ?? Path.GetDirectoryName(Path.GetFullPath(configPath))!;
        string output = Path.GetFullPath(options.OutputFolder);
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
        {
            throw new AdapterFormatException($"Output folder '{output}' is not empty; refusing to mix a new GenAI folder into it.");
        }

        JsonObject config = ReadConfig(configPath);
        using Model model = OnnxReader.Load(options.ModelPath);
        CheckConfigAgainstModel(config, model, configPath, options.ModelPath);
        var tokenizer = TokenizerFiles.Where(f => File.Exists(Path.Combine(tokenizerFolder, f))).ToList();
        if (!tokenizer.Contains("tokenizer.json") && !tokenizer.Contains("tokenizer.model"))
        {
            throw new AdapterFormatException($"Tokenizer folder '{tokenizerFolder}' has neither tokenizer.json nor tokenizer.model.");
        }

        var adapters = new List<(string Name, AdapterFile File)>();
        foreach (GenAiAdapter a in options.Adapters)
        {
            if (a.Name.Length == 0 || a.Name.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || adapters.Any(x => x.Name == a.Name))
            {
                throw new AdapterFormatException($"Adapter name '{a.Name}' is empty, not a valid file name, or given twice.");
            }

            AdapterFile file = OnnxAdapterFormat.Read(a.Path);
            AdapterValidation.ValidateAgainstModel(file, model, a.Path);
            AdapterValidation.ValidateAgainstGenAiConfig(file, configPath, a.Path);
            adapters.Add((a.Name, file with { SourceFormat = AdapterFileFormat.OnnxAdapter }));
        }

        ((JsonObject)config["model"]!["decoder"]!)["filename"] = options.ModelFileName;
        config.Remove("adapters");

        string staging = output + ".partial-" + Guid.NewGuid().ToString("N")[..8];
        Directory.CreateDirectory(staging);
        try
        {
            var files = new List<string>();
            var save = model.DataFiles.Count > 0
                ? new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = options.ModelFileName + ".data" }
                : new SaveOptions { ExternalData = ExternalDataMode.Inline };
            OnnxWriter.Save(model, Path.Combine(staging, options.ModelFileName), save);
            files.Add(options.ModelFileName);
            if (save.ExternalData == ExternalDataMode.SingleFile)
            {
                files.Add(save.DataFileName!);
            }

            File.WriteAllText(Path.Combine(staging, "genai_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            files.Add("genai_config.json");
            foreach (string f in tokenizer)
            {
                File.Copy(Path.Combine(tokenizerFolder, f), Path.Combine(staging, f));
                files.Add(f);
            }

            if (adapters.Count > 0)
            {
                Directory.CreateDirectory(Path.Combine(staging, AdaptersFolder));
                foreach ((string name, AdapterFile file) in adapters)
                {
                    string relative = Path.Combine(AdaptersFolder, name + OnnxAdapterFormat.Extension);
                    OnnxAdapterFormat.Write(file, Path.Combine(staging, relative));
                    files.Add(relative);
                }
            }

            if (Directory.Exists(output))
            {
                Directory.Delete(output); // Empty (checked above).
            }

            Directory.Move(staging, output);
            return new GenAiFolderReport(files);
        }
        catch
        {
            Directory.Delete(staging, recursive: true);
            throw;
        }
    }

    private static JsonObject ReadConfig(string path)
    {
        try
        {
            JsonObject root = JsonNode.Parse(InputFile.ReadAllText(path, "genai_config", 16 << 20, m => new AdapterFormatException(m)))?.AsObject() ?? throw new AdapterFormatException($"genai_config '{path}' is empty.");
            if (root["model"]?["decoder"] is not JsonObject)
            {
                throw new AdapterFormatException($"genai_config '{path}' has no model.decoder section.");
            }

            return root;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or InvalidOperationException)
        {
            throw new AdapterFormatException($"Cannot read genai_config '{path}': {e.Message}", e);
        }
    }

    /// <summary>Every input and output name the decoder section gives (with %d expanded per layer) must exist in the model.</summary>
    private static void CheckConfigAgainstModel(JsonObject config, Model model, string configPath, string modelPath)
    {
        JsonNode decoder = config["model"]!["decoder"]!;
        int layers = decoder["num_hidden_layers"]?.GetValue<int>() ?? 0;
        var inputs = model.Graph.Inputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        var outputs = model.Graph.Outputs.Select(v => v.Name).ToHashSet(StringComparer.Ordinal);
        Check(decoder["inputs"] as JsonObject, inputs, "input");
        Check(decoder["outputs"] as JsonObject, outputs, "output");

        void Check(JsonObject? section, HashSet<string> names, string what)
        {
            foreach ((string key, JsonNode? value) in section ?? [])
            {
                if (value is not JsonValue v || !v.TryGetValue(out string? pattern))
                {
                    continue;
                }

                IEnumerable<string> expected = pattern.Contains("%d", StringComparison.Ordinal)
                    ? Enumerable.Range(0, layers).Select(i => pattern.Replace("%d", i.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal))
                    : [pattern];
                foreach (string name in expected)
                {
                    // GenAI feeds optional inputs (position_ids...) only when the model declares them; logits and present must exist.
                    if (!names.Contains(name) && (what == "output" || key is "input_ids" || key.StartsWith("past_", StringComparison.Ordinal)))
                    {
                        throw new AdapterMismatchException($"genai_config '{configPath}' names {what} '{name}' (decoder.{what}s.{key}); model '{modelPath}' has no such {what}.");
                    }
                }
            }
        }
    }
}
