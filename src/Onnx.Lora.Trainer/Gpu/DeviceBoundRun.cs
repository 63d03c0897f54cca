using Microsoft.ML.OnnxRuntime;

namespace Onnx.Lora.Trainer.Gpu;

/// <summary>
/// Runs a training or evaluation graph on a GPU provider through an <see cref="OrtIoBinding"/>, so that the LoRA
/// parameters cross to the device once per change instead of once per run: ORT copies an input to the device when it
/// is bound, so binding the parameters after each optimizer step (not before each micro-batch or eval batch) makes
/// gradient accumulation and evaluation reuse the device copy. Outputs (loss, token count, gradients) are bound to the
/// session's host buffers, so each run ends with one device-to-host copy per output into memory allocated once.
/// The frozen weights are initializers: ORT places them on the device once, when the session is created.
/// </summary>
/// <remarks>
/// NOTE: ORT ignores active LoRA adapters (<c>RunOptions.AddActiveLoraAdapter</c>) in bound runs. Training feeds its
/// parameters as ordinary inputs, so that does not matter here; serving adapters must not go through this path.
/// The optimizer state stays on the host with the optimizer: per step only the parameters (host to device) and the
/// gradients (device to host) move, each once, a few MB for typical ranks.
/// </remarks>
internal sealed class DeviceBoundRun : IDisposable
{
    private readonly InferenceSession _session;
    private readonly OrtIoBinding _binding;
    private readonly IReadOnlyList<string> _parameterNames;
    private readonly OrtValue[] _parameters;
    private bool _parametersStale = true;

    /// <summary>Binds <paramref name="outputs"/> (host buffers that stay valid for the life of this object).</summary>
    public DeviceBoundRun(InferenceSession session, IReadOnlyList<string> parameterNames, OrtValue[] parameters, IReadOnlyList<string> outputNames, IReadOnlyList<OrtValue> outputs)
    {
        _session = session;
        _parameterNames = parameterNames;
        _parameters = parameters;
        _binding = session.CreateIoBinding();
        for (int i = 0; i < outputNames.Count; i++)
        {
            _binding.BindOutput(outputNames[i], outputs[i]);
        }
    }

    /// <summary>Host parameters were updated (optimizer step, checkpoint restore): the next run copies them to the device again.</summary>
    public void MarkParametersChanged() => _parametersStale = true;

    /// <summary>Runs with the batch inputs <paramref name="names"/> / <paramref name="values"/> (copied to the device now) and the bound parameters.</summary>
    public void Run(RunOptions runOptions, List<string> names, List<OrtValue> values)
    {
        if (_parametersStale)
        {
            for (int i = 0; i < _parameters.Length; i++)
            {
                _binding.BindInput(_parameterNames[i], _parameters[i]);
            }

            _parametersStale = false;
        }

        for (int i = 0; i < names.Count; i++)
        {
            _binding.BindInput(names[i], values[i]);
        }

        _binding.SynchronizeBoundInputs();
        _session.RunWithBinding(runOptions, _binding);
        _binding.SynchronizeBoundOutputs();
    }

    /// <inheritdoc />
    public void Dispose() => _binding.Dispose();
}
