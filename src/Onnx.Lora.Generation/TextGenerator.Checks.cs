using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Resources;

namespace Onnx.Lora.Generation;

// What Create checks before ONNX Runtime opens anything: the adapters fit the model and are finite, the memory suffices.
public sealed partial class TextGenerator
{
    private static void ValidateAdapters(Model model, IReadOnlyList<string> adapterPaths)
    {
        if (adapterPaths.Count == 0)
        {
            return;
        }

        var files = adapterPaths.Select(p => (p, OnnxAdapterFormat.Read(p))).ToList();
        AdapterValidation.CheckNoSharedNames(files);
        foreach ((string path, AdapterFile file) in files)
        {
            AdapterValidation.ValidateAgainstModel(file, model, path);
            // ORT would run a NaN adapter and produce no text at all; merge refuses the same file.
            AdapterValueCheck.EnsureFinite(file, path);
        }
    }

    // ONNX Runtime copies every weight into its own buffers (external data included) and adds a working set for the
    // activations and the cache; refusing up front turns an out-of-memory kill into a message with the numbers.
    private static void EnsureMemory(Model model, string modelPath)
    {
        const long runtimeOverhead = 64L << 20;
        long weights = model.Graph.Initializers.Values.Sum(v => v.Initializer!.ByteLength);
        long needed = weights + (weights / 4) + runtimeOverhead;
        MemoryBudget budget = SystemResources.AvailableMemory();
        if (needed > budget.Bytes)
        {
            throw new ResourceLimitException(
                $"Generating with model '{modelPath}' needs ~{SystemResources.FormatGiB(needed)} (weights {SystemResources.FormatGiB(weights)}) but {SystemResources.FormatGiB(budget.Bytes)} is available ({budget.Source}).");
        }
    }

    private static OrtLoraAdapter LoadAdapter(string path)
    {
        try
        {
            return OrtLoraAdapter.Create(path, null);
        }
        catch (OnnxRuntimeException e)
        {
            throw new AdapterFormatException($"Adapter '{path}' was rejected by ONNX Runtime: {e.Message}", e);
        }
    }
}
