namespace Onnx.Lora.TorchRef;

// NOTE: compiled only while the trainer has no LoraTrainingSession (see the csproj); OursPeer.Session.cs replaces it.

/// <summary>Stand-in for our trainer before it exists: the bench runs the libtorch side only, parity says what is missing.</summary>
internal static class OursPeer
{
    public static bool Available => false;

    public static ITrainingPeer Create(string loraModelPath, AdamWSettings adamw, int threads, string? profilePrefix = null) =>
        throw new NotSupportedException($"Our trainer (LoraTrainingSession) is not in this build yet; cannot train '{loraModelPath}' with {adamw} on {threads} threads{(profilePrefix is null ? string.Empty : " (profiled)")}.");

    /// <summary>Ends ORT profiling of <paramref name="peer"/> and returns the profile file, or null when it is not our peer or not profiled.</summary>
    public static string? EndProfiling(ITrainingPeer peer) => peer is null ? null : null;
}
