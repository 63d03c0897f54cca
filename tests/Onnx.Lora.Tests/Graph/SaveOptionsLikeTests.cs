using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

/// <summary><see cref="SaveOptions.Like(string, Model, IProgress{SaveProgress}?, CancellationToken)"/>: the one place a verb's output layout is decided.</summary>
[TestClass]
public sealed class SaveOptionsLikeTests
{
    [TestMethod]
    public void Like_SourceWithExternalData_OneNewDataFileNamedAfterTheOutput()
    {
        using Model source = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "external", "model.onnx"));
        var progress = new Progress<SaveProgress>();
        using var cts = new CancellationTokenSource();

        SaveOptions options = SaveOptions.Like("/out/merged.onnx", source, progress, cts.Token);

        Assert.AreEqual(ExternalDataMode.SingleFile, options.ExternalData);
        Assert.AreEqual("merged.onnx.data", options.DataFileName);
        Assert.AreSame(progress, options.Progress);
        Assert.AreEqual(cts.Token, options.CancellationToken);
    }

    [TestMethod]
    public void Like_InlineSource_WritesInline()
    {
        using Model source = OnnxReader.Load(Fixtures.Path("stories260K", "reference-onnx", "model.onnx"));

        SaveOptions options = SaveOptions.Like("merged.onnx", source);

        Assert.AreEqual(ExternalDataMode.Inline, options.ExternalData);
        Assert.IsNull(options.DataFileName);
    }
}
