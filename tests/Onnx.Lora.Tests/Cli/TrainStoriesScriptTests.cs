using System.Diagnostics;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Cli;

/// <summary>tools/train-stories.sh: `--resume` as its first argument, and resuming a finished run.</summary>
[TestClass]
public sealed class TrainStoriesScriptTests
{
    private static (int Code, string Output) RunScript(string defaultOut, params string[] args)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(Path.Combine(Fixtures.RepoRoot, "tools", "train-stories.sh"));
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["TRAIN_STORIES_OUT"] = defaultOut;
        using Process p = Process.Start(start)!;
        Task<string> error = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + error.Result);
    }

    [TestMethod]
    public void Resume_AsFirstArgumentOnAFinishedRun_SaysItIsFinished()
    {
        using var temp = new TempDir();
        string[] small = ["--max-steps", "2", "--eval-steps", "0", "--early-stopping-patience", "0", "--save-steps", "1", "--seq-length", "64", "--intra-op-threads", "1"];
        (int code, string output) = RunScript(temp.Path, small);
        Assert.AreEqual(0, code, output);

        (code, output) = RunScript(temp.Path, ["--resume", .. small]);
        Assert.AreEqual(0, code, output);
        Assert.IsFalse(output.Contains("unrecognized option", StringComparison.Ordinal), output);
        StringAssert.Contains(output, "is already finished (step 2 of 2)");
        Assert.IsFalse(output.Contains("steps 3..2", StringComparison.Ordinal), output);
    }
}
