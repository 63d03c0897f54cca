using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Graph;

[TestClass]
public sealed class AtomicFileTests
{
    [TestMethod]
    public void Commit_WhenTheEntryPointRenameFails_LeavesNoOldModelBesideNewData()
    {
        // Stands in for a kill between the two renames: the model's temporary vanishes, so its rename fails after the
        // data file's rename. The old model must not be left to pair with the new data.
        using var dir = new TempDir();
        string model = dir.File("model.onnx"), data = dir.File("model.onnx.data");
        File.WriteAllText(model, "old model");
        File.WriteAllText(data, "old data");
        var batch = new AtomicFileBatch();
        batch.Add(data, s => s.Write("new data"u8));
        batch.Add(model, s => s.Write("new model"u8));
        File.Delete(Directory.EnumerateFiles(dir.Path, ".model.onnx.*.tmp").Single(f => !f.Contains(".data.", StringComparison.Ordinal)));

        // A failed rename is a failed write: reported for the final name (the temporary is an implementation detail).
        var e = Assert.ThrowsExactly<OutputWriteException>(batch.Commit);
        Assert.IsInstanceOfType<FileNotFoundException>(e.InnerException);
        Assert.IsFalse(e.Message.Contains(".tmp", StringComparison.Ordinal), e.Message);
        batch.Dispose();

        Assert.AreEqual("new data", File.ReadAllText(data));
        Assert.IsFalse(File.Exists(model), "the old model must be gone before the new data takes its name");
    }

    [TestMethod]
    public void Write_WithTemporariesOfOtherWriters_DeletesOnlyThoseOfDeadProcesses()
    {
        using var dir = new TempDir();
        string guid = Guid.NewGuid().ToString("N");
        string dead = dir.File($".out.bin.{int.MaxValue}-{guid}.tmp"); // no process has that id (pid_max ≤ 2^22)
        string live = dir.File($".out.bin.{Environment.ProcessId}-{guid}.tmp"); // a writer of this process, still going
        string foreign = dir.File($".other.bin.{int.MaxValue}-{guid}.tmp"); // another file's temporary
        foreach (string f in (string[])[dead, live, foreign])
        {
            File.WriteAllText(f, "partial");
        }

        AtomicFile.WriteAllText(dir.File("out.bin"), "complete");

        Assert.AreEqual("complete", File.ReadAllText(dir.File("out.bin")));
        Assert.IsFalse(File.Exists(dead), "a dead writer's temporary is removed");
        Assert.IsTrue(File.Exists(live), "a live writer's temporary is kept");
        Assert.IsTrue(File.Exists(foreign), "only temporaries of the file being written are touched");
    }

    [TestMethod]
    public void RemoveStaleTemporaryFolders_LeftoversOfDeadAndLiveWriters_DeletesOnlyTheDeadOnes()
    {
        using var dir = new TempDir();
        string guid = Guid.NewGuid().ToString("N");
        string dead = dir.File($".artifacts.{int.MaxValue}-{guid}.tmp"); // no process has that id (pid_max ≤ 2^22)
        string live = dir.File(AtomicFile.TemporaryFolderName("artifacts")); // this process: still building
        string other = dir.File($".checkpoint-5.{int.MaxValue}-{guid}.tmp"); // another kind of staging folder
        foreach (string d in (string[])[dead, live, other])
        {
            Directory.CreateDirectory(d);
            File.WriteAllText(Path.Combine(d, "training.onnx"), "partial");
        }

        AtomicFile.RemoveStaleTemporaryFolders(dir.Path, "artifacts");

        Assert.IsFalse(Directory.Exists(dead), "a dead writer's staging folder is removed");
        Assert.IsTrue(Directory.Exists(live), "a live writer's staging folder is kept");
        Assert.IsTrue(Directory.Exists(other), "only the named kind is touched");
        StringAssert.StartsWith(Path.GetFileName(live), $".artifacts.{Environment.ProcessId}-");
    }
}
