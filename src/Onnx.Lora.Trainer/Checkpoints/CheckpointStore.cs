using System.Globalization;
using System.Text.Json;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Checkpoints;

/// <summary>
/// Saves and loads training checkpoints as folders <c>checkpoint-&lt;step&gt;</c> under the run's output folder:
/// <list type="bullet">
/// <item><c>adapter_model.safetensors</c> + <c>adapter_config.json</c>: the adapter in PEFT layout (PEFT can load it);</item>
/// <item><c>trainable_parameters.safetensors</c>: the parameters exactly as the training graph holds them (resume reads these, so a resume is bit-exact whatever layout PEFT wants);</item>
/// <item><c>optimizer.safetensors</c>: AdamW moments (<c>exp_avg.&lt;name&gt;</c>, <c>exp_avg_sq.&lt;name&gt;</c>);</item>
/// <item><c>trainer_state.json</c>: Hugging Face Trainer's state file (global_step, max_steps, log_history...);</item>
/// <item><c>onnx_lora_state.json</c>: what a resume needs: step, schedule, RNG state, data position, early-stopping state.</item>
/// </list>
/// Atomicity: every file is written and flushed to disk inside a hidden temporary folder, which is renamed to its
/// final name last. A save killed at any moment leaves at most a hidden temporary folder (ignored, and removed by
/// the next save); the previous checkpoints are never touched until the new one is complete.
/// </summary>
public static class CheckpointStore
{
    /// <summary>Prefix of checkpoint folder names.</summary>
    public const string FolderPrefix = "checkpoint-";

    /// <summary>Hugging Face Trainer's state file name (written in its format; its presence marks a complete checkpoint).</summary>
    public const string StateFile = "trainer_state.json";

    /// <summary>Our resume state file name.</summary>
    public const string ResumeStateFile = "onnx_lora_state.json";

    /// <summary>PEFT adapter weights file name.</summary>
    public const string AdapterFile = "adapter_model.safetensors";

    /// <summary>PEFT adapter config file name.</summary>
    public const string AdapterConfigFile = "adapter_config.json";

    /// <summary>Raw trainable parameters file name.</summary>
    public const string ParametersFile = "trainable_parameters.safetensors";

    /// <summary>Optimizer moments file name.</summary>
    public const string OptimizerFile = "optimizer.safetensors";

    private const string TempPrefix = ".checkpoint-";
    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true };

    /// <summary>
    /// Writes <paramref name="checkpoint"/> as <c>checkpoint-&lt;GlobalStep&gt;</c> in <paramref name="outputDir"/>,
    /// then deletes the oldest checkpoints beyond <paramref name="keepLast"/> (0 keeps all).
    /// </summary>
    /// <param name="outputDir">The run folder.</param>
    /// <param name="checkpoint">What to save.</param>
    /// <param name="manifest">The LoRA manifest, used to lay out the PEFT adapter.</param>
    /// <param name="keepLast">How many checkpoints to keep (the new one included); 0 keeps all.</param>
    /// <param name="baseModelName">PEFT's base_model_name_or_path when the manifest records none.</param>
    /// <returns>The checkpoint folder.</returns>
    /// <exception cref="CheckpointException">Writing failed; earlier checkpoints are intact.</exception>
    public static string Save(string outputDir, TrainingCheckpoint checkpoint, LoraManifest manifest, int keepLast, string? baseModelName = null) =>
        Save(outputDir, checkpoint, manifest, keepLast, baseModelName, afterFileWritten: null);

    /// <summary>Core of <see cref="Save(string, TrainingCheckpoint, LoraManifest, int, string?)"/>; the hook lets tests fail a save midway.</summary>
    internal static string Save(string outputDir, TrainingCheckpoint checkpoint, LoraManifest manifest, int keepLast, string? baseModelName, Action<string>? afterFileWritten)
    {
        ArgumentNullException.ThrowIfNull(outputDir);
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(manifest);
        ArgumentOutOfRangeException.ThrowIfNegative(keepLast);

        Directory.CreateDirectory(outputDir);
        RemoveStaleTemporaries(outputDir);
        string name = FolderPrefix + checkpoint.State.GlobalStep.ToString(CultureInfo.InvariantCulture);
        string final = Path.Combine(outputDir, name);
        string temp = Path.Combine(outputDir, $"{TempPrefix}{checkpoint.State.GlobalStep}.{Guid.NewGuid():N}.tmp");
        // Refuse before writing rather than fail with a full disk halfway (the run then stops with exit 7, older
        // checkpoints intact).
        SystemResources.EnsureDiskSpace(outputDir, DiskBytes(checkpoint), $"checkpoint '{final}'");
        try
        {
            Directory.CreateDirectory(temp);
            // Collect the adapter first: a manifest/parameter mismatch fails before anything is written.
            LoraWeights adapter = ToAdapterWeights(manifest, checkpoint.Parameters);
            PeftAdapter.Export(adapter, temp, manifest.ConfigOrDerived(), manifest.Config?.BaseModelNameOrPath ?? baseModelName);
            afterFileWritten?.Invoke(AdapterFile);
            afterFileWritten?.Invoke(AdapterConfigFile);
            WriteTensors(temp, ParametersFile, checkpoint.Parameters, afterFileWritten);
            var moments = checkpoint.Moments.FirstMoments.Select(m => m with { Name = "exp_avg." + m.Name })
                .Concat(checkpoint.Moments.SecondMoments.Select(m => m with { Name = "exp_avg_sq." + m.Name })).ToList();
            WriteTensors(temp, OptimizerFile, moments, afterFileWritten);
            WriteFile(temp, ResumeStateFile, s => JsonSerializer.Serialize(s, checkpoint.State, s_json), afterFileWritten);
            WriteFile(temp, StateFile, s => HfTrainerStateFile.Write(s, checkpoint.State, checkpoint.Run), afterFileWritten);

            if (Directory.Exists(final))
            {
                // Re-saving a step (e.g. the final save after a periodic one): move the old folder aside first so
                // there is never a moment without a complete checkpoint-<step>... except between the two renames,
                // where the older checkpoints still stand.
                string aside = Path.Combine(outputDir, $"{TempPrefix}{checkpoint.State.GlobalStep}.{Guid.NewGuid():N}.old");
                Directory.Move(final, aside);
                Directory.Move(temp, final);
                Directory.Delete(aside, recursive: true);
            }
            else
            {
                Directory.Move(temp, final);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException or ArgumentException or AdapterFormatException)
        {
            TryDelete(temp);
            throw new CheckpointException($"Saving checkpoint '{final}' failed: {e.Message}. Earlier checkpoints are intact.", e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }

        if (keepLast > 0)
        {
            foreach (string old in List(outputDir).SkipLast(keepLast))
            {
                // Rename first so a half-deleted folder never looks like a checkpoint.
                string doomed = Path.Combine(outputDir, $"{TempPrefix}{Path.GetFileName(old)}.{Guid.NewGuid():N}.del");
                Directory.Move(old, doomed);
                TryDelete(doomed);
            }
        }

        return final;
    }

    /// <summary>
    /// Disk a checkpoint takes at most: adapter, raw parameters and two AdamW moments (one float per parameter each),
    /// plus headers and JSON files (bounded by 1 MiB plus the log history of trainer_state.json).
    /// </summary>
    internal static long DiskBytes(TrainingCheckpoint checkpoint) =>
        (4 * checkpoint.Parameters.Sum(p => (long)p.Data.Length * sizeof(float))) + (1 << 20) + ((checkpoint.Run?.LogHistory.Count ?? 0) * LogEntryBytes);

    // An indented log_history entry of trainer_state.json is under 200 bytes.
    private const long LogEntryBytes = 256;

    /// <summary>Checkpoint folders in <paramref name="outputDir"/>, oldest (lowest step) first.</summary>
    public static IReadOnlyList<string> List(string outputDir)
    {
        if (!Directory.Exists(outputDir))
        {
            return [];
        }

        return Directory.EnumerateDirectories(outputDir, FolderPrefix + "*")
            .Select(d => (Dir: d, Ok: int.TryParse(Path.GetFileName(d)[FolderPrefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out int step), Step: step))
            .Where(x => x.Ok && File.Exists(Path.Combine(x.Dir, StateFile)))
            .OrderBy(x => x.Step)
            .Select(x => x.Dir)
            .ToList();
    }

    /// <summary>The newest checkpoint in <paramref name="outputDir"/>, or null.</summary>
    public static string? FindLatest(string outputDir)
    {
        IReadOnlyList<string> all = List(outputDir);
        return all.Count == 0 ? null : all[^1];
    }

    /// <summary>Loads a checkpoint folder written by <see cref="Save(string, TrainingCheckpoint, LoraManifest, int, string?)"/>.</summary>
    /// <exception cref="CheckpointException">A file is missing or malformed; the message names it.</exception>
    public static TrainingCheckpoint Load(string checkpointDir)
    {
        ArgumentNullException.ThrowIfNull(checkpointDir);
        if (!Directory.Exists(checkpointDir))
        {
            throw new CheckpointException($"Checkpoint folder '{checkpointDir}' does not exist.");
        }

        // Checkpoints written before trainer_state.json took HF's format hold our state under that name.
        string statePath = Path.Combine(checkpointDir, File.Exists(Path.Combine(checkpointDir, ResumeStateFile)) ? ResumeStateFile : StateFile);
        TrainerState state;
        try
        {
            state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllBytes(statePath), s_json)
                ?? throw new CheckpointException($"'{statePath}' is empty.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new CheckpointException($"Cannot read '{statePath}': {e.Message}", e);
        }

        List<NamedTensor> parameters = ReadTensors(Path.Combine(checkpointDir, ParametersFile));
        List<NamedTensor> moments = ReadTensors(Path.Combine(checkpointDir, OptimizerFile));
        var first = new List<NamedTensor>();
        var second = new List<NamedTensor>();
        foreach (NamedTensor m in moments)
        {
            if (m.Name.StartsWith("exp_avg_sq.", StringComparison.Ordinal))
            {
                second.Add(m with { Name = m.Name["exp_avg_sq.".Length..] });
            }
            else if (m.Name.StartsWith("exp_avg.", StringComparison.Ordinal))
            {
                first.Add(m with { Name = m.Name["exp_avg.".Length..] });
            }
            else
            {
                throw new CheckpointException($"'{Path.Combine(checkpointDir, OptimizerFile)}': unexpected tensor '{m.Name}'.");
            }
        }

        return new TrainingCheckpoint(parameters, new OptimizerMoments(first, second), state);
    }

    /// <summary>
    /// The adapter in exporter form (MatMul layout A [in,r], B [r,out], scale from the manifest), looked up by the
    /// manifest's tensor names; the exporter's <see cref="PeftAdapter"/> turns it into PEFT's [r,in]/[out,r] layout.
    /// </summary>
    /// <exception cref="CheckpointException">A tensor the manifest names is missing or has the wrong shape.</exception>
    internal static LoraWeights ToAdapterWeights(LoraManifest manifest, IReadOnlyList<NamedTensor> parameters)
    {
        var byName = parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
        return new LoraWeights(manifest.Modules.Select(m => new LoraModuleWeights(m.Module, (int)m.InFeatures, (int)m.OutFeatures, m.Rank,
            Get(byName, m.LoraA, [m.InFeatures, m.Rank]).Data, Get(byName, m.LoraB, [m.Rank, m.OutFeatures]).Data, (float)m.Scaling,
            m.Magnitude is { } mag ? Get(byName, mag, [m.OutFeatures]).Data : null).ShapedAs(m)).ToList());
    }

    private static NamedTensor Get(Dictionary<string, NamedTensor> byName, string name, long[] shape)
    {
        if (!byName.TryGetValue(name, out NamedTensor? t))
        {
            throw new CheckpointException($"Trainable tensor '{name}' named by the LoRA manifest is missing from the parameters.");
        }

        if (!t.Shape.SequenceEqual(shape))
        {
            throw new CheckpointException(string.Create(CultureInfo.InvariantCulture,
                $"Trainable tensor '{name}' has shape [{string.Join(",", t.Shape)}]; the manifest expects [{string.Join(",", shape)}]."));
        }

        return t;
    }

    private static void WriteTensors(string folder, string name, IReadOnlyList<NamedTensor> tensors, Action<string>? afterFileWritten)
    {
        foreach (NamedTensor t in tensors)
        {
            if (t.ElementCount != t.Data.Length)
            {
                throw new ArgumentException($"Tensor '{t.Name}' has shape [{string.Join(",", t.Shape)}] but {t.Data.Length} values.", nameof(tensors));
            }
        }

        SafetensorsWriter.Write(Path.Combine(folder, name), tensors.Select(t => SafetensorsTensor.FromFloats(t.Name, t.Shape, t.Data)));
        afterFileWritten?.Invoke(name);
    }

    private static List<NamedTensor> ReadTensors(string path)
    {
        try
        {
            using SafetensorsFile file = SafetensorsFile.Open(path);
            var result = new List<NamedTensor>(file.Tensors.Count);
            foreach (SafetensorsEntry e in file.Tensors)
            {
                if (e.DataType != DataType.Float)
                {
                    throw new CheckpointException($"'{path}': tensor '{e.Name}' is {e.DataType}; checkpoints hold float32 only.");
                }

                result.Add(new NamedTensor(e.Name, [.. e.Dims], file.ToFloat32(e.Name)));
            }

            return result;
        }
        catch (AdapterFormatException e)
        {
            throw new CheckpointException($"Checkpoint file '{path}' is unreadable: {e.Message}", e);
        }
    }

    private static void WriteFile(string folder, string name, Action<Stream> write, Action<string>? afterFileWritten)
    {
        string path = Path.Combine(folder, name);
        using (var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
        {
            write(stream);
            stream.Flush(flushToDisk: true);
        }

        afterFileWritten?.Invoke(name);
    }

    private static void RemoveStaleTemporaries(string outputDir)
    {
        foreach (string dir in Directory.EnumerateDirectories(outputDir, TempPrefix + "*"))
        {
            TryDelete(dir);
        }
    }

    private static void TryDelete(string dir)
    {
        try
        {
            if (Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: hidden temporaries are ignored by List/Load and retried on the next save.
        }
    }
}
