using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>The valid files the fuzzers start from: small, but with every feature the readers parse.</summary>
public static class FuzzSeeds
{
    /// <summary>
    /// y = If(cond, then: Neg(x·W + b), else: Abs(x)) reshaped; W [4,8] goes to external data, b and the shape stay inline;
    /// attributes of several types; value_info for the MatMul output.
    /// </summary>
    public static Model BuildOnnxModel()
    {
        var b = new GraphBuilder("main", 17);
        Value x = b.Input("x", DataType.Float, 2, 4);
        Value w = b.Floats("w", [4, 8], Enumerable.Range(0, 32).Select(i => i * 0.25f).ToArray());
        Value bias = b.Floats("b", [8], Enumerable.Range(0, 8).Select(i => -i * 0.5f).ToArray());
        Value cond = b.Initializer(InMemoryTensor.From("cond", DataType.Bool, [], new byte[] { 1 }));
        Value xw = b.MatMul(x, w, "matmul");
        GraphBuilder.Typed(xw, DataType.Float, 2, 8);
        Value lin = b.Add(xw, bias, "add");

        var then = new Onnx.Lora.Ir.Graph("then");
        var neg = new Node("", "Neg", [lin], ["then_out"], name: "then_neg");
        then.Add(neg);
        then.Outputs.Add(GraphBuilder.Typed(neg.Outputs[0], DataType.Float, 2, 8));
        var els = new Onnx.Lora.Ir.Graph("else");
        var relu = new Node("", "LeakyRelu", [lin], ["else_out"], [Attr.Float("alpha", 0.1f)], "else_relu");
        els.Add(relu);
        els.Outputs.Add(GraphBuilder.Typed(relu.Outputs[0], DataType.Float, 2, 8));
        var ifNode = new Node("", "If", [cond], ["branch"], [Attr.Graph("then_branch", then), Attr.Graph("else_branch", els)], "if");
        b.Graph.Add(ifNode);
        Value reshaped = b.Reshape(ifNode.Outputs[0], [4, 4], "reshape");
        Value transposed = b.Transpose(reshaped, [1, 0], "transpose");
        b.Output(transposed, "y", DataType.Float, 4, 4);
        return b.Model;
    }

    /// <summary>Writes a PEFT folder (config + safetensors, one float32 and one float16 module) and returns the safetensors bytes.</summary>
    public static byte[] BuildSafetensors(string folder)
    {
        var weights = new LoraWeights(
        [
            new LoraModuleWeights("model.layers.0.self_attn.q_proj", 4, 6, 2, Ramp(8, 0.1f), Ramp(12, -0.05f), 2f),
            new LoraModuleWeights("model.layers.0.mlp.up_proj", 6, 4, 2, Ramp(12, 0.02f), Ramp(8, 0.3f), 2f),
        ]);
        PeftAdapter.Export(weights, folder);
        return File.ReadAllBytes(Path.Combine(folder, PeftAdapter.WeightsFile));
    }

    /// <summary>Two modules named as ORT GenAI names them (A [in, r], B [r, out]); one float32, one float16.</summary>
    public static AdapterFile BuildAdapter() => new()
    {
        AdapterVersion = 3,
        ModelVersion = 7,
        Parameters =
        [
            AdapterParameter.FromFloats("model.layers.0.attn.q_proj.lora_A.weight", [4, 2], Ramp(8, 0.1f)),
            AdapterParameter.FromFloats("model.layers.0.attn.q_proj.lora_B.weight", [2, 4], Ramp(8, -0.2f)),
            new AdapterParameter("model.layers.0.mlp.up_proj.lora_A.weight", DataType.Float16, [4, 2], TensorConvert.FromFloat32(Ramp(8, 0.5f), DataType.Float16)),
            new AdapterParameter("model.layers.0.mlp.up_proj.lora_B.weight", DataType.Float16, [2, 4], TensorConvert.FromFloat32(Ramp(8, 0.25f), DataType.Float16)),
        ],
    };

    private static float[] Ramp(int count, float step) => Enumerable.Range(1, count).Select(i => i * step).ToArray();
}
