namespace Onnx.Lora.Tools;

/// <summary>
/// The checkout the developer tools and tests run from: the folder holding Onnx.Lora.sln, found upwards from the
/// running assembly. One source file, compiled into the bench and the torch reference tool (the test projects see it
/// through them), so that the rule for finding the repository lives in one place.
/// </summary>
public static class RepositoryRoot
{
    /// <summary>Marker file of the repository root.</summary>
    public const string SolutionFile = "Onnx.Lora.sln";

    /// <summary>The repository root above <see cref="AppContext.BaseDirectory"/>.</summary>
    /// <exception cref="InvalidOperationException">No folder above holds <see cref="SolutionFile"/> (a tool copied out of the checkout).</exception>
    public static string Find()
    {
        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            if (File.Exists(Path.Combine(dir, SolutionFile)))
            {
                return dir;
            }
        }

        throw new InvalidOperationException($"{SolutionFile} not found above {AppContext.BaseDirectory}");
    }
}
