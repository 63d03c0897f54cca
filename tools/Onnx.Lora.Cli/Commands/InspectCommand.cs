using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Targets;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora inspect MODEL [--json]</c>: op histogram, parameters, and every linear layer LoRA can target.</summary>
internal sealed class InspectCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("MODEL") { Description = "The .onnx model (external data is read lazily; weights are not loaded)." };
    private static readonly Option<bool> s_json = new("--json") { Description = "Print JSON instead of text." };
    private static readonly JsonSerializerOptions s_jsonOptions = new() { WriteIndented = true };

    public InspectCommand() : base("inspect", "Show a model's ops, parameter count and the linear layers LoRA can target (PEFT module names).")
    {
        MustExist(s_model, "Model");
        Arguments.Add(s_model);
        Options.Add(s_json);
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string path = parse.GetValue(s_model)!;
        using Model model = OnnxReader.Load(path);
        ModelSummary summary = ModelSummary.Create(model);
        string text = parse.GetValue(s_json) ? Json(path, model, summary) : Text(path, model, summary);
        await output.WriteAsync(text).ConfigureAwait(false);
        return ExitCodes.Success;
    }

    private static string Json(string path, Model model, ModelSummary s)
    {
        var doc = new
        {
            model = path,
            opsets = model.OpsetImports.ToDictionary(kv => kv.Key.Length == 0 ? "ai.onnx" : kv.Key, kv => kv.Value),
            parameters = s.ParameterCount,
            parameterBytes = s.ParameterBytes,
            externalBytes = s.ExternalBytes,
            ops = s.OpHistogram.ToDictionary(kv => kv.Key, kv => kv.Value),
            linearLayers = s.LinearLayers.Select(t => new
            {
                module = t.Module,
                op = t.OpKind.ToString(),
                inFeatures = t.InFeatures,
                outFeatures = t.OutFeatures,
                dtype = t.ActivationType.ShortName(),
                weightDtype = t.WeightType.ShortName(),
                quantized = t.Quantized,
                layer = t.LayerIndex,
                outputHead = t.IsOutputHead,
                node = t.Node.Name,
                weight = t.Weight.Name,
            }),
            convLayers = s.ConvLayers.Select(t => new { module = t.Module, inChannels = t.InFeatures / t.Kernel!.Aggregate(1L, (a, k) => a * k), outChannels = t.OutFeatures, kernel = t.Kernel, dtype = t.ActivationType.ShortName(), node = t.Node.Name, weight = t.Weight.Name }),
            embeddingLayers = s.EmbeddingLayers.Select(t => new { module = t.Module, numEmbeddings = t.InFeatures, embeddingDim = t.OutFeatures, dtype = t.ActivationType.ShortName(), node = t.Node.Name, weight = t.Weight.Name }),
        };
        return JsonSerializer.Serialize(doc, s_jsonOptions) + Environment.NewLine;
    }

    private static string Text(string path, Model model, ModelSummary s)
    {
        var w = new StringWriter(CultureInfo.InvariantCulture);
        w.WriteLine($"model: {path}");
        w.WriteLine($"opsets: {string.Join(", ", model.OpsetImports.Select(kv => $"{(kv.Key.Length == 0 ? "ai.onnx" : kv.Key)} {kv.Value}"))}");
        w.WriteLine($"parameters: {s.ParameterCount:N0} ({Bytes(s.ParameterBytes)} stored{(s.ExternalBytes > 0 ? $", {Bytes(s.ExternalBytes)} in external data" : "")})");
        w.WriteLine($"ops ({s.OpHistogram.Sum(kv => kv.Value)} nodes): {string.Join(", ", s.OpHistogram.Select(kv => $"{kv.Key} {kv.Value}"))}");
        w.WriteLine($"linear layers LoRA can target: {s.LinearLayers.Count(t => !t.IsOutputHead)} (+{s.LinearLayers.Count(t => t.IsOutputHead)} output head, excluded from all-linear)");
        if (s.LinearLayers.Count > 0)
        {
            int width = Math.Max(6, s.LinearLayers.Max(t => t.Module.Length));
            w.WriteLine($"  {"module".PadRight(width)}  {"op",-11}  {"in",6}  {"out",6}  {"dtype",-7}  {"quant",-5}  layer");
            foreach (LinearTarget t in s.LinearLayers)
            {
                string layer = t.IsOutputHead ? "head" : t.LayerIndex?.ToString(CultureInfo.InvariantCulture) ?? "-";
                w.WriteLine($"  {t.Module.PadRight(width)}  {t.OpKind,-11}  {t.InFeatures,6}  {t.OutFeatures,6}  {t.ActivationType.ShortName(),-7}  {(t.Quantized ? $"int{t.Bits ?? 8}" : "no"),-5}  {layer}");
            }
        }

        if (s.ConvLayers.Count > 0)
        {
            w.WriteLine($"conv layers LoRA can target (by name): {s.ConvLayers.Count}");
            foreach (LinearTarget t in s.ConvLayers)
            {
                long inChannels = t.InFeatures / t.Kernel!.Aggregate(1L, (a, k) => a * k);
                w.WriteLine($"  {t.Module}  Conv {inChannels}→{t.OutFeatures} kernel {string.Join("x", t.Kernel!)}  {t.ActivationType.ShortName()}");
            }
        }

        if (s.EmbeddingLayers.Count > 0)
        {
            w.WriteLine($"embedding layers LoRA can target (by name): {s.EmbeddingLayers.Count}");
            foreach (LinearTarget t in s.EmbeddingLayers)
            {
                w.WriteLine($"  {t.Module}  Gather {t.InFeatures}×{t.OutFeatures}  {t.ActivationType.ShortName()}");
            }
        }

        return w.ToString();
    }

    internal static string Bytes(long n) => n switch
    {
        >= 1L << 30 => $"{n / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{n / (double)(1L << 20):F2} MiB",
        >= 1L << 10 => $"{n / 1024.0:F1} KiB",
        _ => $"{n} B",
    };
}
