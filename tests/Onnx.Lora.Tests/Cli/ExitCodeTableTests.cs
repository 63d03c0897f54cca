using System.CommandLine;
using System.Reflection;
using System.Text.RegularExpressions;
using Onnx.Lora.Cli;
using Onnx.Lora.Cli.Commands;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>
/// docs/exit-codes.md is read as data: every row of the exit-code table must be an ExitCodes constant, every
/// exception it names must map to its code, and each code is produced by a real CLI run through the path the row
/// names; the hostile-input table's exit column must be the code of its reader's kind, and a sample of its rows is
/// run. A code or row changed on one side only fails here.
/// </summary>
[TestClass]
public sealed partial class ExitCodeTableTests
{
    private static readonly string s_doc = File.ReadAllText(Path.Combine(Fixtures.RepoRoot, "docs", "exit-codes.md"));
    private static readonly string s_checkpoint = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "stories260K.bin");
    private static readonly string s_tokenizer = Path.Combine(Fixtures.RepoRoot, "models", "default", "stories260K", "tok512.model");

    private sealed record CodeRow(int Code, string Name, string When, string RaisedAs);

    private sealed record HostileRow(string Reader, string Input, string Message, int Exit);

    /// <summary>The cells of the markdown table whose header row starts with <paramref name="firstHeader"/>.</summary>
    private static List<string[]> Table(string firstHeader)
    {
        string[] lines = s_doc.Split('\n');
        int header = Array.FindIndex(lines, l => l.StartsWith("| " + firstHeader + " |", StringComparison.Ordinal));
        Assert.IsGreaterThanOrEqualTo(0, header, "table '" + firstHeader + "' in docs/exit-codes.md");
        var rows = new List<string[]>();
        for (int i = header + 2; i < lines.Length && lines[i].StartsWith('|'); i++)
        {
            // Split on cell bars, not on escaped ones inside code spans (`a\|b`).
            rows.Add([.. CellSplit().Split(lines[i].Trim().Trim('|')).Select(c => c.Trim())]);
        }

        return rows;
    }

    private static List<CodeRow> CodeRows() =>
        [.. Table("code").Select(c => new CodeRow(int.Parse(c[0], System.Globalization.CultureInfo.InvariantCulture), c[1], c[2], c[3]))];

    private static List<HostileRow> HostileRows() =>
        [.. Table("reader").Select(c => new HostileRow(c[0], c[1], c[2], int.Parse(c[3], System.Globalization.CultureInfo.InvariantCulture)))];

    private static Dictionary<string, int> Constants() =>
        typeof(ExitCodes).GetFields(BindingFlags.Public | BindingFlags.Static).ToDictionary(f => f.Name, f => (int)f.GetRawConstantValue()!);

    [TestMethod]
    public void CodeTable_EveryRow_IsAnExitCodesConstantAndEveryConstantHasARow()
    {
        Dictionary<string, int> constants = Constants();
        List<CodeRow> rows = CodeRows();
        foreach (CodeRow row in rows)
        {
            Assert.IsTrue(constants.TryGetValue(row.Name, out int value), $"row '{row.Name}' is no ExitCodes constant");
            Assert.AreEqual(value, row.Code, row.Name);
        }

        CollectionAssert.AreEquivalent(constants.Keys.ToList(), rows.Select(r => r.Name).ToList());
    }

    [TestMethod]
    public void CodeTable_EveryNamedException_MapsToItsRowsCode()
    {
        int checkedCount = 0;
        foreach (CodeRow row in CodeRows())
        {
            foreach (Match m in BacktickedName().Matches(row.RaisedAs))
            {
                string name = m.Groups[1].Value;
                if (!name.EndsWith("Exception", StringComparison.Ordinal) || name == nameof(OperationCanceledException))
                {
                    continue; // Cancellation is the run's own path (130), checked by a real run below.
                }

                Type type = FindType(name);
                var e = (Exception)Activator.CreateInstance(type, "x")!;
                Assert.AreEqual(row.Code, LoraCommand.ExitCodeFor(e), $"{name} (row {row.Code} {row.Name})");
                checkedCount++;
            }
        }

        Assert.IsGreaterThanOrEqualTo(12, checkedCount, "the table names the exceptions of every code");
    }

    private static Type FindType(string name)
    {
        // The CLI's own assembly references every library that raises what the table names.
        IEnumerable<Assembly> assemblies = new[] { typeof(ExitCodes).Assembly, typeof(object).Assembly }
            .Concat(typeof(ExitCodes).Assembly.GetReferencedAssemblies().Where(a => a.Name!.StartsWith("Onnx.Lora", StringComparison.Ordinal)).Select(Assembly.Load));
        Type[] found = [.. assemblies.SelectMany(a => a.GetTypes()).Where(t => t.Name == name && typeof(Exception).IsAssignableFrom(t))];
        Assert.HasCount(1, found, $"exception type '{name}' named in docs/exit-codes.md");
        return found[0];
    }

    /// <summary>A verb that fails with a bug, for the one code no user input may produce.</summary>
    private sealed class BuggyCommand() : LoraCommand("buggy", "throws an unexpected exception")
    {
        protected override Task<int> ExecuteAsync(ParseResult parse, TextWriter output, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("a bug");
    }

    [TestMethod]
    [DataRow(0)]
    [DataRow(2)]
    [DataRow(3)]
    [DataRow(4)]
    [DataRow(5)]
    [DataRow(6)]
    [DataRow(7)]
    [DataRow(70)]
    [DataRow(74)]
    [DataRow(130)]
    public void CodeTable_Row_IsWhatARealRunReturns(int code)
    {
        Assert.IsTrue(CodeRows().Any(r => r.Code == code), $"code {code} has a row");
        using var dir = new TempDir();
        string model = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        File.WriteAllText(dir.File("d.jsonl"), string.Concat(Enumerable.Repeat("{\"text\": \"Once upon a time there was a cat.\"}\n", 8)));
        (int exit, string err) = code switch
        {
            0 => Cli("inspect", model),
            2 => Cli("inject", model, "--rank", "many"),
            3 => Cli("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--max-steps", "4", "--learning-rate", "1e38", "--seq-length", "32"),
            4 => Cli("inspect", Garbage(dir.File("garbage.onnx"))),
            5 => Cli("merge", model, "--adapter", Garbage(dir.File("garbage.onnx_adapter")), "-o", dir.File("m.onnx")),
            6 => Cli("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", Garbage(dir.File("bad.jsonl")), "--output-dir", dir.File("run")),
            7 => Cli("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", dir.File("d.jsonl"), "--output-dir", dir.File("run"), "--memory-limit", "1MiB"),
            70 => Buggy(),
            74 => CliInto(dir, model),
            _ => Cancelled(model),
        };
        Assert.AreEqual(code, exit, err);
    }

    private static (int, string) Cli(params string[] args)
    {
        (int code, _, string err) = CliRunner.Run(args);
        return (code, err);
    }

    private static (int, string) CliInto(TempDir dir, string model)
    {
        Directory.CreateDirectory(dir.File("taken"));
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), dir.File("peft"));
        return Cli("merge", model, "--adapter", dir.File("peft"), "-o", dir.File("taken"));
    }

    private static (int, string) Cancelled(string model)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        int code = CliApp.RunAsync(["generate", Onnx.Lora.Tests.Generation.StoriesModels.Plain, "-t", s_tokenizer, "-n", "2"], output, error, cancelled.Token).GetAwaiter().GetResult();
        _ = model;
        return (code, error.ToString());
    }

    private static (int, string) Buggy()
    {
        var root = new RootCommand { new BuggyCommand() };
        using var output = new StringWriter();
        using var error = new StringWriter();
        int code = root.Parse(["buggy"]).InvokeAsync(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false }).GetAwaiter().GetResult();
        StringAssert.Contains(error.ToString(), "internal error (InvalidOperationException)");
        return (code, error.ToString());
    }

    private static string Garbage(string path)
    {
        File.WriteAllBytes(path, [.. Enumerable.Range(0, 4096).Select(i => (byte)((i * 37) + 11))]);
        return path;
    }

    /// <summary>The exit code of the kind of file a hostile-input row's reader reads.</summary>
    private static int KindCode(string reader) => reader switch
    {
        "ONNX" or "external data" => 4,
        ".onnx_adapter" or "safetensors" or "adapter_config.json" => 5,
        "any output" => 2, // OutputConflictException: an output that is an input, or one another writer holds.
        _ when reader.StartsWith("JSONL", StringComparison.Ordinal) || reader.StartsWith("tokenizer", StringComparison.Ordinal)
            || reader.StartsWith("chat template", StringComparison.Ordinal) || reader.StartsWith("SentencePiece", StringComparison.Ordinal) => 6,
        _ => throw new AssertFailedException($"reader '{reader}' has no kind in this test; add it"),
    };

    [TestMethod]
    public void HostileTable_EveryRow_HasItsReadersCodeAndItsExceptionMapsToIt()
    {
        List<HostileRow> rows = HostileRows();
        Assert.IsGreaterThan(30, rows.Count);
        foreach (HostileRow row in rows)
        {
            Assert.AreEqual(KindCode(row.Reader), row.Exit, $"{row.Reader} / {row.Input}");
            foreach (Match m in BacktickedName().Matches(row.Message))
            {
                if (m.Groups[1].Value.EndsWith("Exception", StringComparison.Ordinal))
                {
                    var e = (Exception)Activator.CreateInstance(FindType(m.Groups[1].Value), "x")!;
                    Assert.AreEqual(row.Exit, LoraCommand.ExitCodeFor(e), $"{row.Reader} / {row.Input}");
                }
            }
        }
    }

    [TestMethod]
    [DataRow("ONNX", "truncated / garbage / empty")]
    [DataRow(".onnx_adapter", "wrong identifier")]
    [DataRow("safetensors", "header not JSON")]
    [DataRow("safetensors", "data_offsets not numbers")]
    [DataRow("safetensors", "no tensors")]
    [DataRow("safetensors", "integer")]
    [DataRow("adapter_config.json", "use_dora")]
    [DataRow("adapter_config.json", "target_modules")]
    [DataRow("JSONL", "invalid JSON")]
    [DataRow("JSONL", "not UTF-8")]
    public void HostileTable_Row_IsWhatARealRunReturns(string reader, string input)
    {
        HostileRow row = HostileRows().Single(r => r.Reader == reader && r.Input.Contains(input, StringComparison.Ordinal));
        using var dir = new TempDir();
        string model = LoraTestModels.Save(LoraTestModels.Base(), dir.File("base.onnx"));
        string peft = dir.File("peft");
        PeftAdapter.Export(LoraTestModels.RandomWeightsForBase(2, 4), peft);
        string weights = Path.Combine(peft, PeftAdapter.WeightsFile);
        string A = "base_model.model.qkv_proj.lora_A.weight";
        (int exit, string err) = (reader, input) switch
        {
            ("ONNX", _) => Cli("inspect", Garbage(dir.File("g.onnx"))),
            (".onnx_adapter", _) => Cli("merge", model, "--adapter", Garbage(dir.File("g.onnx_adapter")), "-o", dir.File("m.onnx")),
            ("safetensors", "header not JSON") => Edit(weights, bytes => "{not json"u8.CopyTo(bytes.AsSpan(8))),
            ("safetensors", "data_offsets not numbers") => EditHeader(weights, h => h[A]!["data_offsets"] = new System.Text.Json.Nodes.JsonArray("0", "1")),
            ("safetensors", "no tensors") => Empty(weights),
            ("safetensors", _) => EditHeader(weights, h => h[A]!["dtype"] = "I32"),
            ("adapter_config.json", "use_dora") => Config(peft, "\"use_dora\": false", "\"use_dora\": true"),
            ("adapter_config.json", _) => Config(peft, "\"up_proj\"", "\"gate_proj\""),
            ("JSONL", "invalid JSON") => Cli("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", Write(dir.File("d.jsonl"), "{\"text\": 1,"u8), "--output-dir", dir.File("run")),
            _ => Cli("train", "--model", s_checkpoint, "--tokenizer", s_tokenizer, "--data", Write(dir.File("d.jsonl"), [.. "{\"text\": \"caf"u8, 0xE9, .. "\"}\n"u8]), "--output-dir", dir.File("run")),
        };
        Assert.AreEqual(row.Exit, exit, err);

        (int, string) Merge() => Cli("merge", model, "--adapter", peft, "-o", dir.File("m.onnx"));

        (int, string) Edit(string path, Action<byte[]> edit)
        {
            byte[] bytes = File.ReadAllBytes(path);
            edit(bytes);
            File.WriteAllBytes(path, bytes);
            return Merge();
        }

        (int, string) EditHeader(string path, Action<System.Text.Json.Nodes.JsonObject> edit)
        {
            Onnx.Lora.Tests.BadInput.AdapterConsistencyTests.EditHeader(path, edit);
            return Merge();
        }

        (int, string) Empty(string path)
        {
            Onnx.Lora.Tests.BadInput.AdapterConsistencyTests.WriteSafetensors(path);
            return Merge();
        }

        (int, string) Config(string folder, string from, string to)
        {
            string path = Path.Combine(folder, PeftAdapter.ConfigFile);
            string text = File.ReadAllText(path);
            Assert.Contains(from, text);
            File.WriteAllText(path, text.Replace(from, to, StringComparison.Ordinal));
            return Merge();
        }
    }

    private static string Write(string path, ReadOnlySpan<byte> bytes)
    {
        File.WriteAllBytes(path, bytes.ToArray());
        return path;
    }

    [GeneratedRegex(@"(?<!\\)\|")]
    private static partial Regex CellSplit();

    [GeneratedRegex("`([A-Za-z]+)`")]
    private static partial Regex BacktickedName();
}
