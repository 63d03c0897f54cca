using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Trainer.Evaluation;

/// <summary>Opens the model files the evaluators score, turning ORT's load errors into the model's error.</summary>
internal static class EvaluationSession
{
    /// <exception cref="OnnxSerializationException">ONNX Runtime cannot load the file; the message names it.</exception>
    public static InferenceSession Open(string path, SessionOptions options)
    {
        try
        {
            return new InferenceSession(path, options);
        }
        catch (OnnxRuntimeException e)
        {
            throw new OnnxSerializationException($"ONNX Runtime cannot load '{path}': {e.Message}", e);
        }
    }
}
