using System.Globalization;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;

namespace Onnx.Lora.Tests.Support;

/// <summary>ONNX Runtime's profiler as a memory judge: sessions set up as the trainer runs them, and the arena's peak.</summary>
internal static class OrtProfiling
{
    /// <summary>Arena on, memory pattern and prepacking off (as <c>LoraTrainingSession</c> runs), profiling to <paramref name="prefix"/>.</summary>
    public static SessionOptions Options(string prefix)
    {
        var options = new SessionOptions
        {
            IntraOpNumThreads = 1,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            EnableMemoryPattern = false,
            EnableProfiling = true,
            ProfileOutputPathPrefix = prefix,
        };
        options.AddSessionConfigEntry("session.disable_prepacking", "1");
        return options;
    }

    /// <summary>Ends <paramref name="session"/>'s profiling and returns the most arena bytes in use after any kernel (the profile file is deleted).</summary>
    public static long PeakArenaInUse(InferenceSession session)
    {
        string profile = session.EndProfiling();
        try
        {
            using JsonDocument doc = JsonDocument.Parse(File.ReadAllBytes(profile));
            return doc.RootElement.EnumerateArray()
                .Where(e => e.TryGetProperty("cat", out JsonElement c) && c.GetString() == "Node" && e.GetProperty("args").TryGetProperty("mem_in_use_peak", out _))
                .Max(e => long.Parse(e.GetProperty("args").GetProperty("mem_in_use_peak").GetString()!, CultureInfo.InvariantCulture));
        }
        finally
        {
            File.Delete(profile);
        }
    }
}
