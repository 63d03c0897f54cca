using System.Text.Json;
using Onnx.Lora.Cli;
using Onnx.Lora.Cli.Commands;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Spectre.Console;

namespace Onnx.Lora.Tests.Cli;

/// <summary>The live training display (what a terminal shows), rendered into a captured interactive console.</summary>
[TestClass]
public sealed class LiveProgressTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void RunLive_ShortRun_ShowsPhasesStepsLossEvalAndCheckpoints()
    {
        using var dir = new TempDir();
        string data = dir.File("train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => JsonSerializer.Serialize(new { text = $"Tom saw {i} red birds in the [big] tree." })));
        string model = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K");
        var options = new TrainOptions
        {
            Model = Path.Combine(model, "stories260K.bin"), Tokenizer = Path.Combine(model, "tok512.model"), Data = data, EvalData = data,
            OutputDir = dir.File("run"), SeqLength = 32, BatchSize = 2, MaxSteps = 4, EvalSteps = 2, SaveSteps = 2, IntraOpThreads = 1,
        };
        using var screen = new StringWriter();
        IAnsiConsole console = Terminal(screen);

        TrainingSummary summary = TrainCommand.RunLive(options, TestContext.CancellationToken, console);

        string shown = screen.ToString();
        TestContext.WriteLine(shown[^Math.Min(shown.Length, 2000)..]);
        Assert.AreEqual(4, summary.Steps);
        StringAssert.Contains(shown, "step 4/4 loss ", "the bar's description follows the steps");
        StringAssert.Contains(shown, " eval ", "the latest eval loss is shown beside it");
        StringAssert.Contains(shown, "saved checkpoint-2");
        StringAssert.Contains(shown, "saved checkpoint-4");
        StringAssert.Contains(shown, "building training graphs", "phase messages appear as finished tasks");
        StringAssert.Contains(shown, "memory: estimated peak", "the memory estimate is shown before work starts");
    }

    [TestMethod]
    public void WithBytesBar_Merge_ShowsTheOutputAndCompletes()
    {
        using var dir = new TempDir();
        string lora = dir.File("lora.onnx");
        Onnx.Lora.Formats.LoraWeights weights = LoraTestModels.RandomWeights(4, 8);
        OnnxWriter.Save(LoraTestModels.WithLora(LoraTestModels.Base(), weights, LoraPlacement.Initializers), lora,
            new SaveOptions { ExternalData = ExternalDataMode.SingleFile, SizeThreshold = 16 });
        using var screen = new StringWriter();

        MergeReport report = ConsoleProgress.WithBytesBar(Terminal(screen), "merging → merged.onnx",
            progress => LoraMerger.Merge(lora, dir.File("merged.onnx"), options: new MergeOptions { Progress = progress }));

        string shown = screen.ToString();
        TestContext.WriteLine(shown);
        Assert.AreEqual(weights.Modules.Count, report.MergedModules);
        StringAssert.Contains(shown, "merging → merged.onnx");
        StringAssert.Contains(shown, "100%", "the bar ends full");
        Assert.IsTrue(File.Exists(dir.File("merged.onnx")));
    }

    // What a terminal would show, captured: interactive, ANSI cursor movement, no colors, wide enough for one line per task.
    private static IAnsiConsole Terminal(StringWriter screen)
    {
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.Yes,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.Yes,
            Out = new AnsiConsoleOutput(screen),
        });
        console.Profile.Width = 160;
        return console;
    }
}
