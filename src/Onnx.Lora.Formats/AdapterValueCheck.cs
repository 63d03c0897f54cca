namespace Onnx.Lora.Formats;

/// <summary>Refuses adapter files whose weights are not finite, before any runtime consumes them.</summary>
public static class AdapterValueCheck
{
    /// <summary>
    /// Refuses <paramref name="adapter"/> when a float parameter holds NaN or ±Inf (non-float parameters are the type
    /// checks' business): ONNX Runtime would run it and every logit would be NaN.
    /// </summary>
    /// <exception cref="AdapterFormatException">A parameter holds NaN/Inf; the message names it and the file.</exception>
    public static void EnsureFinite(AdapterFile adapter, string source)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        foreach (AdapterParameter p in adapter.Parameters)
        {
            if (!LoraTensorTypes.IsAccepted(p.DataType))
            {
                continue;
            }

            float[] values = p.ToFloat32();
            int bad = Array.FindIndex(values, v => !float.IsFinite(v));
            if (bad >= 0)
            {
                throw new AdapterFormatException($"Parameter '{p.Name}' of adapter '{source}' holds a non-finite value ({values[bad]} at index {bad}); the adapter is broken (NaN/Inf).");
            }
        }
    }
}
