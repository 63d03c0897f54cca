using Onnx.Lora.Cli.Commands;

namespace Onnx.Lora.Tests.Cli;

/// <summary>The one error line: hostile files must not make it megabytes long or smuggle control characters into a terminal.</summary>
[TestClass]
public sealed class MessageTextTests
{
    [TestMethod]
    public void OneLine_ShortMessage_IsUnchangedButForLineBreaks()
    {
        Assert.AreEqual("Tensor 'w' in 'm.onnx' is bad. See above.", MessageText.OneLine("Tensor 'w' in 'm.onnx' is bad.\nSee above."));
    }

    [TestMethod]
    public void OneLine_LongQuotedItem_KeepsStartEndAndLength()
    {
        string location = "dir/" + new string('x', 100_000) + "/w.data";
        string line = MessageText.OneLine($"External data file '{location}' of tensor 'w' does not exist.");

        Assert.IsLessThan(400, line.Length, line);
        StringAssert.StartsWith(line, "External data file 'dir/xxx");
        StringAssert.Contains(line, "/w.data' (100,011 chars) of tensor 'w' does not exist.");
    }

    [TestMethod]
    public void OneLine_LongUnquotedMessage_IsCutToTheLimit()
    {
        string line = MessageText.OneLine("values: " + string.Join(",", Enumerable.Range(0, 50_000)));
        Assert.IsLessThanOrEqualTo(MessageText.MaxLine + 30, line.Length);
        StringAssert.EndsWith(line, " chars)");
    }

    [TestMethod]
    public void OneLine_ControlCharacters_AreEscaped()
    {
        string line = MessageText.OneLine("identifier '\u001b[31mZIP\u0007'");
        Assert.AreEqual("identifier '\\x1B[31mZIP\\x07'", line);
    }
}
