using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Trainer.Artifacts;

namespace Onnx.Lora.Trainer;

/// <summary>The evaluation model's metric outputs (e.g. correct predictions of a classifier), beside loss and token count.</summary>
public sealed partial class LoraTrainingSession
{
    private float[][]? _metricValues;
    private OrtValue[]? _metricOrt;
    private string[]? _evalOutputNames;
    private OrtValue[]? _evalOutputValues;

    /// <summary>Names of the evaluation metrics, in the order of <see cref="GetEvalMetric"/>; empty for a loss without metrics.</summary>
    public IReadOnlyList<string> EvalMetrics => _artifacts.EvalMetricOutputs;

    /// <summary>The value of metric <paramref name="index"/> (a sum over the batch's counted samples) from the last <see cref="Evaluate"/>.</summary>
    /// <exception cref="InvalidOperationException">No evaluation has run yet.</exception>
    public float GetEvalMetric(int index) => (_metricValues ?? throw new InvalidOperationException("No evaluation has run yet."))[index][0];

    private string[] EvalOutputNames => _evalOutputNames ??= [TrainingGraph.LossOutput, TrainingGraph.TokenCountOutput, .. _artifacts.EvalMetricOutputs];

    private OrtValue[] EvalOutputValues
    {
        get
        {
            if (_evalOutputValues is null)
            {
                // One scalar buffer per metric, bound once: evaluation batches allocate nothing for them.
                _metricValues = [.. _artifacts.EvalMetricOutputs.Select(_ => new float[1])];
                _metricOrt = [.. _metricValues.Select(v => OrtValue.CreateTensorValueFromMemory(v, []))];
                _evalOutputValues = [_lossOrt, _tokensOrt, .. _metricOrt];
            }

            return _evalOutputValues;
        }
    }

    private void DisposeMetrics()
    {
        foreach (OrtValue v in _metricOrt ?? [])
        {
            v.Dispose();
        }
    }
}
