using Onnx.Lora.Graph.Serialization;
using ScottPlot;

namespace Onnx.Lora.Trainer.Metrics;

/// <summary>Draws train and eval loss against the step as a PNG (ScottPlot), written atomically.</summary>
public static class LossCurvePlot
{
    /// <summary>Writes the train and eval loss curves to <paramref name="path"/>.</summary>
    /// <param name="path">The PNG file.</param>
    /// <param name="train">Train losses.</param>
    /// <param name="eval">Eval losses.</param>
    /// <param name="title">Plot title.</param>
    /// <param name="width">Width in pixels.</param>
    /// <param name="height">Height in pixels.</param>
    public static void Write(string path, LossSeries train, LossSeries eval, string title = "Loss", int width = 900, int height = 540)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(eval);
        using var plot = new Plot();
        AddSeries(plot, train, "train loss", Colors.SteelBlue, markers: false);
        AddSeries(plot, eval, "eval loss", Colors.OrangeRed, markers: true);
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss (nats / token)");
        plot.ShowLegend(Alignment.UpperRight);
        byte[] png = plot.GetImageBytes(width, height, ImageFormat.Png);
        AtomicFile.WriteAllBytes(path, png);
    }

    private static void AddSeries(Plot plot, LossSeries series, string label, Color color, bool markers)
    {
        (double[] xs, double[] ys) = series.Points();
        if (xs.Length == 0)
        {
            return;
        }

        var scatter = plot.Add.Scatter(xs, ys, color);
        scatter.LegendText = label;
        scatter.LineWidth = 2;
        scatter.MarkerSize = markers || xs.Length == 1 ? 7 : 0;
    }
}
