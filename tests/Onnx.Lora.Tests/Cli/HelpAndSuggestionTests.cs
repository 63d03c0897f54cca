namespace Onnx.Lora.Tests.Cli;

[TestClass]
public sealed class HelpAndSuggestionTests
{
    [TestMethod]
    public void Help_AloneAndWithAVerb_PrintsUsage()
    {
        (int code, string output, _) = CliRunner.Run("help");
        Assert.AreEqual(0, code);
        StringAssert.Contains(output, "train");
        StringAssert.Contains(output, "eval");

        (code, output, _) = CliRunner.Run("help", "train");
        Assert.AreEqual(0, code);
        StringAssert.Contains(output, "--learning-rate");
    }

    [TestMethod]
    public void Run_MistypedFlag_SuggestsTheClosestOption()
    {
        (int code, _, string error) = CliRunner.Run("train", "--lerning-rate", "1e-3");
        Assert.AreEqual(2, code);
        StringAssert.Contains(error, "Did you mean '--learning-rate'");
        StringAssert.Contains(error, "onnx-lora train --help");
    }

    [TestMethod]
    public void Run_MistypedVerb_SuggestsTheClosestVerb()
    {
        (int code, _, string error) = CliRunner.Run("trian", "--model", "m.onnx");
        Assert.AreEqual(2, code);
        StringAssert.Contains(error, "Did you mean 'train'");
    }

    [TestMethod]
    public void Run_UnrelatedWord_SuggestsNothing()
    {
        (int code, _, string error) = CliRunner.Run("frobnicate");
        Assert.AreEqual(2, code);
        Assert.IsFalse(error.Contains("Did you mean", StringComparison.Ordinal), error);
    }
}

[TestClass]
public sealed class TrainFlagTests
{
    private static List<KeyValuePair<string, string>> Overrides(params string[] args)
    {
        System.CommandLine.RootCommand root = Onnx.Lora.Cli.CliApp.CreateRoot();
        System.CommandLine.ParseResult parse = root.Parse(["train", .. args]);
        var train = (Onnx.Lora.Cli.Commands.TrainCommand)parse.CommandResult.Command;
        return train.ReadOverrides(parse);
    }

    [TestMethod]
    public void ReadOverrides_SwitchesNotGiven_DoNotOverrideTheConfigFile()
    {
        List<KeyValuePair<string, string>> o = Overrides("--config", "c.yaml", "--seed", "3");
        CollectionAssert.AreEqual(new[] { KeyValuePair.Create("seed", "3") }, o);
    }

    [TestMethod]
    public void ReadOverrides_SwitchAloneOrWithValue_IsTrueOrThatValue()
    {
        List<KeyValuePair<string, string>> o = Overrides("--packing", "--truncate", "false", "--resume");
        CollectionAssert.AreEquivalent(new[] { KeyValuePair.Create("packing", "true"), KeyValuePair.Create("truncate", "false"), KeyValuePair.Create("resume", "latest") }, o);
    }
}
