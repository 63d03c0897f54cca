using System.Globalization;
using System.Text;
using System.Text.Json;
using Onnx.Lora.Ir.Serialization;

namespace Onnx.Lora.Trainer.Metrics;

/// <summary>One line of metrics.jsonl.</summary>
public sealed record MetricRecord
{
    /// <summary>"train" or "eval".</summary>
    public required string Kind { get; init; }

    /// <summary>Optimizer step the record belongs to.</summary>
    public required int Step { get; init; }

    /// <summary>Mean loss per target token.</summary>
    public required double Loss { get; init; }

    /// <summary>Learning rate used (train).</summary>
    public double? LearningRate { get; init; }

    /// <summary>Global gradient norm before clipping (train).</summary>
    public double? GradNorm { get; init; }

    /// <summary>Throughput over the step (train).</summary>
    public double? TokensPerSecond { get; init; }

    /// <summary>Target tokens seen so far.</summary>
    public long? TokensSeen { get; init; }

    /// <summary>Fractional epoch.</summary>
    public double? Epoch { get; init; }

    /// <summary>Seconds since the run (or resume) started.</summary>
    public double? ElapsedSeconds { get; init; }

    /// <summary>exp(loss) for eval records.</summary>
    public double? Perplexity => Kind == "eval" ? Math.Exp(Loss) : null;
}

/// <summary>
/// Appends <see cref="MetricRecord"/>s to <c>metrics.jsonl</c>, one JSON object per line, flushed after each, so
/// a killed run keeps every line it reported. Opening for a resume first drops lines past the resumed step
/// (written after the checkpoint by the run that died), so the file reads like one uninterrupted run.
/// </summary>
public sealed class MetricsLog : IDisposable
{
    private readonly FileStream _stream;
    private readonly Utf8JsonWriter _writer; // One writer for the whole run (Reset per line): no per-step allocation.

    private MetricsLog(string path, FileStream stream)
    {
        Path = path;
        _stream = stream;
        _writer = new Utf8JsonWriter(stream);
    }

    /// <summary>The file.</summary>
    public string Path { get; }

    /// <summary>Train losses of the run so far (kept lines included), in bounded memory: for the loss curve and summary.</summary>
    public LossSeries TrainLoss { get; } = new();

    /// <summary>Eval losses of the run so far (kept lines included).</summary>
    public LossSeries EvalLoss { get; } = new();

    /// <summary>Learning rate per train step (kept lines included), for the second axis of the loss curve.</summary>
    public LossSeries LearningRate { get; } = new();

    /// <summary>Opens (creates) <paramref name="path"/>; with <paramref name="resumeStep"/>, keeps only lines with step ≤ it.</summary>
    /// <exception cref="IOException">The file cannot be opened.</exception>
    public static MetricsLog Open(string path, int? resumeStep = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        var kept = new List<MetricRecord>();
        if (File.Exists(path))
        {
            if (resumeStep is null)
            {
                File.Delete(path);
            }
            else
            {
                var lines = new StringBuilder();
                foreach (string line in File.ReadLines(path))
                {
                    MetricRecord? r = TryParse(line);
                    if (r is not null && r.Step <= resumeStep)
                    {
                        kept.Add(r);
                        lines.Append(line).Append('\n');
                    }
                }

                AtomicFile.WriteAllText(path, lines.ToString());
            }
        }

        string? dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (dir is not null)
        {
            Directory.CreateDirectory(dir);
        }

        var stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read);
        var log = new MetricsLog(path, stream);
        foreach (MetricRecord r in kept)
        {
            log.Track(r);
        }

        return log;
    }

    /// <summary>The records of <paramref name="path"/> with step ≤ <paramref name="upToStep"/>, in file order (lines cut by a kill are skipped).</summary>
    /// <exception cref="IOException">The file cannot be read.</exception>
    public static IReadOnlyList<MetricRecord> ReadRecords(string path, int upToStep)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            return [];
        }

        // FileShare.ReadWrite: the run's own append stream stays open while a checkpoint reads the history.
        using var reader = new StreamReader(new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite));
        var records = new List<MetricRecord>();
        while (reader.ReadLine() is { } line)
        {
            if (TryParse(line) is { } r && r.Step <= upToStep)
            {
                records.Add(r);
            }
        }

        return records;
    }

    /// <summary>Appends one record and flushes it to the OS.</summary>
    public void Write(MetricRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        Utf8JsonWriter writer = _writer;
        writer.Reset();
        {
            writer.WriteStartObject();
            writer.WriteString("kind", record.Kind);
            writer.WriteNumber("step", record.Step);
            WriteDouble(writer, "loss", record.Loss);
            WriteOptional(writer, "perplexity", record.Perplexity);
            WriteOptional(writer, "learning_rate", record.LearningRate);
            WriteOptional(writer, "grad_norm", record.GradNorm);
            WriteOptional(writer, "tokens_per_second", record.TokensPerSecond);
            if (record.TokensSeen is long tokens)
            {
                writer.WriteNumber("tokens_seen", tokens);
            }

            WriteOptional(writer, "epoch", record.Epoch);
            WriteOptional(writer, "elapsed_seconds", record.ElapsedSeconds);
            writer.WriteEndObject();
            writer.Flush();
        }

        _stream.WriteByte((byte)'\n');
        _stream.Flush();
        Track(record);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _writer.Dispose();
        _stream.Dispose();
    }

    private void Track(MetricRecord record)
    {
        (record.Kind == "eval" ? EvalLoss : TrainLoss).Add(record.Step, record.Loss);
        if (record.Kind != "eval" && record.LearningRate is double lr)
        {
            LearningRate.Add(record.Step, lr);
        }
    }

    private static void WriteOptional(Utf8JsonWriter w, string name, double? value)
    {
        if (value is double v)
        {
            WriteDouble(w, name, v);
        }
    }

    // JSON has no NaN/Infinity: write them as strings so the line stays valid and the value is still visible.
    private static void WriteDouble(Utf8JsonWriter w, string name, double v)
    {
        if (double.IsFinite(v))
        {
            w.WriteNumber(name, v);
        }
        else
        {
            w.WriteString(name, v.ToString(CultureInfo.InvariantCulture));
        }
    }

    private static MetricRecord? TryParse(string line)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(line);
            JsonElement r = doc.RootElement;
            double? Opt(string n) => r.TryGetProperty(n, out JsonElement v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;
            return new MetricRecord
            {
                Kind = r.GetProperty("kind").GetString()!,
                Step = r.GetProperty("step").GetInt32(),
                Loss = r.GetProperty("loss").ValueKind == JsonValueKind.Number ? r.GetProperty("loss").GetDouble()
                    : double.Parse(r.GetProperty("loss").GetString()!, CultureInfo.InvariantCulture),
                LearningRate = Opt("learning_rate"),
                GradNorm = Opt("grad_norm"),
                TokensPerSecond = Opt("tokens_per_second"),
                TokensSeen = r.TryGetProperty("tokens_seen", out JsonElement t) ? t.GetInt64() : null,
                Epoch = Opt("epoch"),
                ElapsedSeconds = Opt("elapsed_seconds"),
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            // A line cut by a kill mid-write: drop it.
            return null;
        }
    }
}
