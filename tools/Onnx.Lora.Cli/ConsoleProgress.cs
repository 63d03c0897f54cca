using Onnx.Lora.Ir.Serialization;
using Spectre.Console;

namespace Onnx.Lora.Cli;

/// <summary>Live progress bars on an interactive terminal; nothing extra when output goes to a file or a pipe.</summary>
internal static class ConsoleProgress
{
    /// <summary>Whether <paramref name="output"/> is the user's interactive terminal (not redirected, not a test's writer).</summary>
    public static bool IsLive(TextWriter output) =>
        ReferenceEquals(output, Console.Out) && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;

    /// <summary>
    /// Runs <paramref name="work"/> under a bar of bytes written (percentage, rate, time left) when <paramref name="output"/>
    /// is live; otherwise runs it with no progress.
    /// </summary>
    public static T WithBytesBar<T>(TextWriter output, string description, Func<IProgress<SaveProgress>?, T> work)
    {
        return IsLive(output) ? WithBytesBar(AnsiConsole.Console, description, work) : work(null);
    }

    /// <summary>Runs <paramref name="work"/> under a bar of bytes written on <paramref name="console"/>.</summary>
    internal static T WithBytesBar<T>(IAnsiConsole console, string description, Func<IProgress<SaveProgress>?, T> work)
    {
        T result = default!;
        console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = 30 }, new PercentageColumn(),
                new TransferSpeedColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                ProgressTask task = ctx.AddTask(Markup.Escape(description), maxValue: 1);
                result = work(new SpectreBytes(task));
                task.Value = task.MaxValue;
            });
        return result;
    }

    // Reports arrive synchronously on the working thread; Spectre's renderer reads the task from its own thread.
    private sealed class SpectreBytes(ProgressTask task) : IProgress<SaveProgress>
    {
        public void Report(SaveProgress value)
        {
            task.MaxValue = Math.Max(1, value.TotalBytes);
            task.Value = value.BytesWritten;
        }
    }
}
