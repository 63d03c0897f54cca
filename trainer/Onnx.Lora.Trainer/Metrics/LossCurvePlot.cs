using Onnx.Lora.Graph.Serialization;
using ScottPlot;

namespace Onnx.Lora.Trainer.Metrics;

/// <summary>Draws train and eval loss against the step as a PNG (ScottPlot), written atomically.</summary>
public static class LossCurvePlot
{
    /// <summary>Writes the loss curve of <paramref name="records"/> to <paramref name="path"/>.</summary>
    /// <param name="path">The PNG file.</param>
    /// <param name="records">Metrics; non-finite losses are left out of the curve.</param>
    /// <param name="title">Plot title.</param>
    /// <param name="width">Width in pixels.</param>
    /// <param name="height">Height in pixels.</param>
    public static void Write(string path, IEnumerable<MetricRecord> records, string title = "Loss", int width = 900, int height = 540)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(records);
        List<MetricRecord> finite = records.Where(r => double.IsFinite(r.Loss)).ToList();
        using var plot = new Plot();
        AddSeries(plot, finite.Where(r => r.Kind == "train").ToList(), "train loss", Colors.SteelBlue, markers: false);
        AddSeries(plot, finite.Where(r => r.Kind == "eval").ToList(), "eval loss", Colors.OrangeRed, markers: true);
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss (nats / token)");
        plot.ShowLegend(Alignment.UpperRight);
        byte[] png = plot.GetImageBytes(width, height, ImageFormat.Png);
        AtomicFile.WriteAllBytes(path, png);
    }

    private static void AddSeries(Plot plot, List<MetricRecord> points, string label, Color color, bool markers)
    {
        if (points.Count == 0)
        {
            return;
        }

        double[] xs = points.Select(p => (double)p.Step).ToArray();
        double[] ys = points.Select(p => p.Loss).ToArray();
        var scatter = plot.Add.Scatter(xs, ys, color);
        scatter.LegendText = label;
        scatter.LineWidth = 2;
        scatter.MarkerSize = markers || points.Count == 1 ? 7 : 0;
    }
}
