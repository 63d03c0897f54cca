using Onnx.Lora.Ir.Serialization;
using ScottPlot;

namespace Onnx.Lora.Trainer.Metrics;

/// <summary>
/// Draws train and eval loss against the step as a PNG (ScottPlot), written atomically: the loss on a log axis (a linear
/// one flattens everything after the first drop into one line) and the learning rate on a second axis at the right.
/// </summary>
public static class LossCurvePlot
{
    // Ticks of the log-loss axis: 1-2-5 decades refined with the values losses of language models sit at.
    private static readonly double[] s_mantissas = [1, 1.5, 2, 3, 4, 5, 6, 8];

    /// <summary>Writes the train and eval loss curves (and the learning rate, when given) to <paramref name="path"/>.</summary>
    /// <param name="path">The PNG file.</param>
    /// <param name="train">Train losses.</param>
    /// <param name="eval">Eval losses.</param>
    /// <param name="title">Plot title.</param>
    /// <param name="width">Width in pixels.</param>
    /// <param name="height">Height in pixels.</param>
    /// <param name="learningRate">Learning rate per step, or null.</param>
    public static void Write(string path, LossSeries train, LossSeries eval, string title = "Loss", int width = 900, int height = 540, LossSeries? learningRate = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(eval);
        using var plot = new Plot();
        double low = double.PositiveInfinity, high = double.NegativeInfinity;
        AddLossSeries(plot, train, "train loss", Colors.SteelBlue, markers: false, ref low, ref high);
        AddLossSeries(plot, eval, "eval loss", Colors.OrangeRed, markers: true, ref low, ref high);
        if (double.IsFinite(low))
        {
            plot.Axes.Left.TickGenerator = LogTicks(low, high);
        }

        if (learningRate is not null && learningRate.Count > 0)
        {
            (double[] xs, double[] ys) = learningRate.Points();
            var lr = plot.Add.Scatter(xs, ys, Colors.Gray.WithAlpha(0.8));
            lr.LegendText = "learning rate (right axis)";
            lr.LineWidth = 1.5f;
            lr.MarkerSize = 0;
            lr.LinePattern = LinePattern.Dashed;
            lr.Axes.YAxis = plot.Axes.Right;
            plot.Axes.Right.Label.Text = "learning rate";
            plot.Axes.Right.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = v => NumberText.Plain(v, 3) };
        }

        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss (nats / token, log scale)");
        plot.ShowLegend(Alignment.UpperRight);
        byte[] png = plot.GetImageBytes(width, height, ImageFormat.Png);
        AtomicFile.WriteAllBytes(path, png);
    }

    // Positive losses are drawn as log10(loss); non-positive ones (a perfectly fit batch) cannot be and are left out.
    private static void AddLossSeries(Plot plot, LossSeries series, string label, Color color, bool markers, ref double low, ref double high)
    {
        (double[] xs, double[] ys) = series.Points();
        int[] keep = Enumerable.Range(0, ys.Length).Where(i => ys[i] > 0).ToArray();
        if (keep.Length == 0)
        {
            return;
        }

        double[] steps = keep.Select(i => xs[i]).ToArray();
        double[] logs = keep.Select(i => Math.Log10(ys[i])).ToArray();
        low = Math.Min(low, logs.Min());
        high = Math.Max(high, logs.Max());
        var scatter = plot.Add.Scatter(steps, logs, color);
        scatter.LegendText = label;
        scatter.LineWidth = 2;
        scatter.MarkerSize = markers || steps.Length == 1 ? 7 : 0;
    }

    private static ScottPlot.TickGenerators.NumericManual LogTicks(double lowLog, double highLog)
    {
        var ticks = new ScottPlot.TickGenerators.NumericManual();
        int added = 0;
        for (int decade = (int)Math.Floor(lowLog) - 1; decade <= (int)Math.Ceiling(highLog); decade++)
        {
            foreach (double m in s_mantissas)
            {
                double value = m * Math.Pow(10, decade);
                double position = Math.Log10(value);
                // One tick beyond each end keeps the extreme points between labels.
                if (position >= lowLog - 0.2 && position <= highLog + 0.2)
                {
                    ticks.AddMajor(position, NumberText.Plain(value, 3));
                    added++;
                }
            }
        }

        if (added < 2)
        {
            ticks.AddMajor(lowLog, NumberText.Plain(Math.Pow(10, lowLog), 3));
            ticks.AddMajor(highLog, NumberText.Plain(Math.Pow(10, highLog), 3));
        }

        return ticks;
    }
}
