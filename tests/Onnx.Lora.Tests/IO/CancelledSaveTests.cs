using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Exporter;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.IO;

/// <summary>A save cancelled mid-way (SIGINT / SIGTERM during merge, inject, convert) stops between tensors and leaves nothing behind.</summary>
[TestClass]
public sealed class CancelledSaveTests
{
    [TestMethod]
    public void Save_CancelledAfterFirstTensor_ThrowsAndLeavesNoOutputTemporaryOrLock()
    {
        using var dir = new TempDir();
        string target = dir.File("m.onnx");
        using Model model = LoraTestModels.Base();
        Assert.IsGreaterThan(1, model.Graph.Initializers.Count, "one tensor would give the cancellation no gap");
        using var cancel = new CancellationTokenSource();
        int written = 0;
        var options = new SaveOptions
        {
            ExternalData = ExternalDataMode.SingleFile,
            SizeThreshold = 0,
            CancellationToken = cancel.Token,
            Progress = new Immediate(_ =>
            {
                written++;
                cancel.Cancel();
            }),
        };

        Assert.ThrowsExactly<OperationCanceledException>(() => OnnxWriter.Save(model, target, options));

        Assert.AreEqual(1, written, "the save went on after it was cancelled");
        Assert.IsEmpty(Directory.EnumerateFileSystemEntries(dir.Path).ToArray(), string.Join(", ", Directory.EnumerateFileSystemEntries(dir.Path)));
    }

    /// <summary>Reports on the saving thread (Progress&lt;T&gt; would post to the thread pool, after the fact).</summary>
    private sealed class Immediate(Action<SaveProgress> report) : IProgress<SaveProgress>
    {
        public void Report(SaveProgress value) => report(value);
    }
}
