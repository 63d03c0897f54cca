using System.CommandLine;
using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;

namespace Onnx.Lora.Cli.Commands;

/// <summary><c>onnx-lora inject MODEL -o OUT [options]</c>: adds LoRA adapters, prints PEFT's trainable-parameter summary.</summary>
internal sealed class InjectCommand : LoraCommand
{
    private static readonly Argument<string> s_model = new("MODEL") { Description = "The base .onnx model." };
    private static readonly Option<string?> s_output = new("--output", "-o") { Description = "Where to write the LoRA model (required unless --dry-run)." };
    private static readonly Option<int> s_rank = new("--rank", "-r") { Description = "LoRA rank r.", DefaultValueFactory = _ => 8 };
    private static readonly Option<double> s_alpha = new("--alpha") { Description = "LoRA alpha (scale alpha/r).", DefaultValueFactory = _ => 8 };
    private static readonly Option<double> s_dropout = new("--dropout") { Description = "Dropout on the branch input (training graphs only)." };
    private static readonly Option<string> s_targets = new("--targets") { Description = "Comma-separated module names (suffix match, as PEFT) or all-linear.", DefaultValueFactory = _ => LoraOptions.AllLinear };
    private static readonly Option<string?> s_targetRegex = new("--target-regex") { Description = "Regex the whole module name must match (overrides --targets)." };
    private static readonly Option<string?> s_exclude = new("--exclude") { Description = "Comma-separated module names never adapted." };
    private static readonly Option<string?> s_layers = new("--layers") { Description = "Layer indices to adapt, e.g. 0-3,7." };
    private static readonly Option<string[]> s_rankPattern = new("--rank-pattern") { Description = "REGEX=R rank override (repeatable).", AllowMultipleArgumentsPerToken = false };
    private static readonly Option<string[]> s_alphaPattern = new("--alpha-pattern") { Description = "REGEX=A alpha override (repeatable)." };
    private static readonly Option<bool> s_rsLora = new("--rslora") { Description = "Scale alpha/sqrt(r) (rsLoRA)." };
    private static readonly Option<bool> s_dora = new("--dora") { Description = "Weight-decomposed LoRA (DoRA)." };
    private static readonly Option<LoraInit> s_init = new("--init") { Description = "Initialization of A: KaimingUniform, Gaussian or Pissa.", DefaultValueFactory = _ => LoraInit.KaimingUniform };
    private static readonly Option<int> s_seed = new("--seed") { Description = "Seed of the initialization." };
    private static readonly Option<bool> s_slots = new("--adapter-slots") { Description = "Declare A/B as graph inputs with r=0 defaults (for .onnx_adapter files) instead of trainable initializers." };
    private static readonly Option<bool> s_training = new("--training") { Description = "Build a training graph (adds the dropout node)." };
    private static readonly Option<string?> s_baseModel = new("--base-model") { Description = "Recorded as PEFT base_model_name_or_path (a Hugging Face id or folder); default: the model's folder if it holds config.json, else its path." };
    private static readonly Option<string?> s_excludeRegex = new("--exclude-regex") { Description = "Regex: modules whose whole name matches are never adapted (PEFT exclude_modules as a string)." };
    private static readonly Option<string?> s_layersPattern = new("--layers-pattern") { Description = "Name of the layer list --layers counts in, e.g. layers or h (PEFT layers_pattern)." };
    private static readonly Option<bool> s_dryRun = new("--dry-run") { Description = "List the modules that would be adapted; write nothing." };

    public InjectCommand() : base("inject", "Add LoRA adapters to the selected linear layers of a model.")
    {
        MustExist(s_model, "Model");
        Arguments.Add(s_model);
        foreach (Option o in new Option[] { s_output, s_rank, s_alpha, s_dropout, s_targets, s_targetRegex, s_exclude, s_layers, s_rankPattern, s_alphaPattern, s_rsLora, s_dora, s_init, s_seed, s_slots, s_training, s_baseModel, s_excludeRegex, s_layersPattern, s_dryRun })
        {
            Options.Add(o);
        }
    }

    protected override async Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken)
    {
        string path = parse.GetValue(s_model)!;
        string? outPath = parse.GetValue(s_output);
        bool dryRun = parse.GetValue(s_dryRun);
        if (outPath is null && !dryRun)
        {
            throw new LoraOptionsException("Missing --output (-o) for the LoRA model; or pass --dry-run to only list the modules.");
        }

        LoraOptions options = ReadOptions(parse) with { BaseModelNameOrPath = BaseModelReference.For(path, parse.GetValue(s_baseModel)) };
        options.Validate();
        using Model model = OnnxReader.Load(path);
        long baseParameters = ModelSummary.Create(model).ParameterCount;
        IReadOnlyList<SelectedTarget> plan = LoraInjector.Plan(model, options);
        long trainable = LoraInjector.TrainableParameters(plan, options.UseDora);
        if (!dryRun)
        {
            LoraInjector.Inject(model, options);
            if (Path.GetFullPath(outPath!) == Path.GetFullPath(path))
            {
                throw new LoraOptionsException($"Refusing to overwrite the base model '{path}'; choose another --output.");
            }

            OnnxWriter.Save(model, outPath!, new SaveOptions { CancellationToken = cancellationToken });
        }

        var w = new StringWriter(CultureInfo.InvariantCulture);
        long all = baseParameters + trainable;
        w.WriteLine($"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {100.0 * trainable / all:F4}");
        w.WriteLine($"{(dryRun ? "would adapt" : "adapted")} {plan.Count} modules ({(options.UseDora ? "DoRA" : "LoRA")}, {options.Placement}, init {options.Init}):");
        int width = plan.Max(p => p.Target.Module.Length);
        foreach (SelectedTarget s in plan)
        {
            w.WriteLine($"  {s.Target.Module.PadRight(width)}  {s.Target.OpKind,-11} {s.Target.InFeatures}→{s.Target.OutFeatures}  r={s.Rank} alpha={s.Alpha} scale={options.ScalingFor(s.Rank, s.Alpha):G6}");
        }

        if (!dryRun)
        {
            w.WriteLine($"wrote {outPath}");
        }

        await output.WriteAsync(w.ToString()).ConfigureAwait(false);
        return ExitCodes.Success;
    }

    private static LoraOptions ReadOptions(ParseResult parse)
    {
        string? regex = parse.GetValue(s_targetRegex);
        string? layers = parse.GetValue(s_layers);
        return new LoraOptions
        {
            Rank = parse.GetValue(s_rank),
            Alpha = parse.GetValue(s_alpha),
            Dropout = parse.GetValue(s_dropout),
            Targets = regex is null ? Split(parse.GetValue(s_targets)) : [],
            TargetRegex = regex,
            Exclude = Split(parse.GetValue(s_exclude)),
            ExcludeRegex = parse.GetValue(s_excludeRegex),
            LayersPattern = parse.GetValue(s_layersPattern) is { } lp ? Split(lp) : null,
            Layers = layers is null ? null : LoraOptions.ParseLayers(layers),
            RankPattern = (parse.GetValue(s_rankPattern) ?? []).Select(PatternOverride.Parse).ToArray(),
            AlphaPattern = (parse.GetValue(s_alphaPattern) ?? []).Select(PatternOverride.Parse).ToArray(),
            UseRsLora = parse.GetValue(s_rsLora),
            UseDora = parse.GetValue(s_dora),
            Init = parse.GetValue(s_init),
            Seed = parse.GetValue(s_seed),
            Placement = parse.GetValue(s_slots) ? LoraPlacement.AdapterSlots : LoraPlacement.Initializers,
            TrainingGraph = parse.GetValue(s_training),
        };
    }

    private static string[] Split(string? list) =>
        list?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [];
}
