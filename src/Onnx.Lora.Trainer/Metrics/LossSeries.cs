namespace Onnx.Lora.Trainer.Metrics;

/// <summary>
/// A loss curve in bounded memory, so a run of millions of steps holds as little as a run of hundreds: points are
/// kept as they come until <see cref="Capacity"/>, then neighbours are averaged in pairs and every later point stands
/// for twice as many records. First, last and minimum are exact (the summary reports them); the curve is for the plot.
/// </summary>
public sealed class LossSeries
{
    /// <summary>Points kept at most (a plot a few thousand pixels wide shows no more).</summary>
    public const int Capacity = 2048;

    private readonly double[] _steps = new double[Capacity];
    private readonly double[] _losses = new double[Capacity];
    private int _points;
    private int _bucket = 1; // records per kept point
    private int _pending;
    private double _pendingStep;
    private double _pendingLoss;

    /// <summary>Finite losses added.</summary>
    public long Count { get; private set; }

    /// <summary>The first finite loss, or null.</summary>
    public double? First { get; private set; }

    /// <summary>The last finite loss, or null.</summary>
    public double? Last { get; private set; }

    /// <summary>The smallest finite loss, or null.</summary>
    public double? Min { get; private set; }

    /// <summary>Adds the loss of <paramref name="step"/>; non-finite losses are left out (they have no place on a curve).</summary>
    public void Add(int step, double loss)
    {
        if (!double.IsFinite(loss))
        {
            return;
        }

        Count++;
        First ??= loss;
        Last = loss;
        Min = Min is double m && m <= loss ? m : loss;
        _pendingStep += step;
        _pendingLoss += loss;
        if (++_pending < _bucket)
        {
            return;
        }

        if (_points == Capacity)
        {
            Halve();
        }

        _steps[_points] = _pendingStep / _pending;
        _losses[_points] = _pendingLoss / _pending;
        _points++;
        _pending = 0;
        _pendingStep = 0;
        _pendingLoss = 0;
    }

    /// <summary>The curve: (step, loss) points, averaged over buckets of records once the run outgrew <see cref="Capacity"/>.</summary>
    public (double[] Steps, double[] Losses) Points()
    {
        int n = _points + (_pending > 0 ? 1 : 0);
        double[] steps = new double[n], losses = new double[n];
        _steps.AsSpan(0, _points).CopyTo(steps);
        _losses.AsSpan(0, _points).CopyTo(losses);
        if (_pending > 0)
        {
            steps[^1] = _pendingStep / _pending;
            losses[^1] = _pendingLoss / _pending;
        }

        return (steps, losses);
    }

    private void Halve()
    {
        for (int i = 0; i < Capacity / 2; i++)
        {
            _steps[i] = (_steps[2 * i] + _steps[(2 * i) + 1]) / 2;
            _losses[i] = (_losses[2 * i] + _losses[(2 * i) + 1]) / 2;
        }

        _points = Capacity / 2;
        // The point being completed still averages the old bucket size; every later point averages twice as many.
        _bucket *= 2;
    }
}
