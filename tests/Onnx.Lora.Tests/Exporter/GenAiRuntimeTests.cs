using Microsoft.ML.OnnxRuntimeGenAI;
using GenAiModel = Microsoft.ML.OnnxRuntimeGenAI.Model;
using Model = Onnx.Lora.Ir.Model;
using Onnx.Lora.Exporter.GenAi;
using Onnx.Lora.Exporter.Merge;
using Onnx.Lora.Exporter.Serving;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Injection;
using Onnx.Lora.Tests.Support;

namespace Onnx.Lora.Tests.Exporter;

/// <summary>
/// The GenAI folders we write, loaded and run by ORT GenAI 0.20 itself (Model, Generator, Adapters.LoadAdapter +
/// SetActiveAdapter): greedy generation with our .onnx_adapter equals generation with the merged model, and without
/// it equals the base model's. Each fixture decoder is one made by GenAI's model builder.
/// </summary>
[TestClass]
public sealed class GenAiRuntimeTests
{
    private const string AdapterName = "task";
    private const int MaxLength = 24;
    private const string Prompt = "Once upon a time";

    [TestMethod]
    [DataRow("ortgenai-tiny-random-llama-fp32")]
    [DataRow("ortgenai-tiny-random-llama-fp16")]
    public void GenAiFolder_WithAdapter_GeneratesAsTheMergedModelAndWithoutAsTheBase(string fixture)
    {
        using var dir = new TempDir();
        string source = Fixtures.Path(fixture);
        string lora = TrainedLoraModel(Path.Combine(source, "model.onnx"), dir);
        ServingExportReport serving = ServingExport.Export(lora, new ServingExportOptions { OutputFolder = dir.File("serving") });
        string adapter = serving.AdapterPaths[ServingExport.DefaultAdapterName];
        GenAiFolder.Write(new GenAiFolderOptions
        {
            ModelPath = serving.ModelPath,
            OutputFolder = dir.File("genai"),
            GenAiConfigPath = Path.Combine(source, "genai_config.json"),
            Adapters = [new GenAiAdapter(AdapterName, adapter)],
        });

        BaseModelMerge.Merge(Path.Combine(source, "model.onnx"), adapter, dir.File("merged.onnx"));
        GenAiFolder.Write(new GenAiFolderOptions
        {
            ModelPath = dir.File("merged.onnx"),
            OutputFolder = dir.File("genai-merged"),
            GenAiConfigPath = Path.Combine(source, "genai_config.json"),
        });

        int[] withAdapter = Generate(dir.File("genai"), AdapterName);
        int[] merged = Generate(dir.File("genai-merged"), adapterName: null);
        int[] withoutAdapter = Generate(dir.File("genai"), adapterName: null);
        int[] baseModel = Generate(source, adapterName: null);

        Assert.AreEqual(MaxLength, withAdapter.Length, "greedy search ran to max_length");
        CollectionAssert.AreEqual(merged, withAdapter, $"adapter {string.Join(",", withAdapter)} vs merged {string.Join(",", merged)}");
        CollectionAssert.AreEqual(baseModel, withoutAdapter, "the slots' r = 0 defaults add nothing");
        CollectionAssert.AreNotEqual(baseModel, withAdapter, "the adapter changes what is generated (else this test proves nothing)");
    }

    private static int[] Generate(string folder, string? adapterName)
    {
        using var model = new GenAiModel(folder);
        using var adapters = new Adapters(model);
        using var parameters = new GeneratorParams(model);
        parameters.SetSearchOption("max_length", MaxLength);
        parameters.SetSearchOption("do_sample", false);
        using var tokenizer = new Tokenizer(model);
        using Sequences prompt = tokenizer.Encode(Prompt);
        Assert.IsGreaterThan(1, prompt[0].Length, $"the folder's tokenizer encodes '{Prompt}'");
        using var generator = new Generator(model, parameters);
        if (adapterName is not null)
        {
            adapters.LoadAdapter(Path.Combine(folder, GenAiFolder.AdaptersFolder, adapterName + ".onnx_adapter"), adapterName);
            generator.SetActiveAdapter(adapters, adapterName);
        }

        generator.AppendTokenSequences(prompt);
        while (!generator.IsDone())
        {
            generator.GenerateNextToken();
        }

        return generator.GetSequence(0).ToArray();
    }

    /// <summary>The base with LoRA on every linear layer but the head, A and B random and large enough to change greedy tokens.</summary>
    private static string TrainedLoraModel(string basePath, TempDir dir)
    {
        using Model model = OnnxReader.Load(basePath);
        LoraManifest manifest = LoraInjector.Inject(model, new LoraOptions { Rank = 4, Alpha = 8 });
        var rng = new Random(20261203);
        foreach (LoraModuleInfo m in manifest.Modules)
        {
            model.Graph.Initializers.SetData(m.LoraA, InMemoryTensor.FromFloats(m.LoraA, [m.InFeatures, m.Rank], LoraTestModels.Rand((int)m.InFeatures * m.Rank, rng, 1f)));
            model.Graph.Initializers.SetData(m.LoraB, InMemoryTensor.FromFloats(m.LoraB, [m.Rank, m.OutFeatures], LoraTestModels.Rand(m.Rank * (int)m.OutFeatures, rng, 1f)));
        }

        string path = dir.File("lora.onnx");
        OnnxWriter.Save(model, path, new SaveOptions { ExternalData = ExternalDataMode.SingleFile });
        return path;
    }
}
