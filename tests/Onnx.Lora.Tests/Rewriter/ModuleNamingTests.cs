using Onnx.Lora.Families;

namespace Onnx.Lora.Tests.Rewriter;

[TestClass]
public sealed class ModuleNamingTests
{
    /// <summary>The layer index written in a module path, parsed here independently of ModuleNaming.</summary>
    internal static int? LayerOf(string module)
    {
        string[] parts = module.Split('.');
        for (int i = 0; i + 1 < parts.Length; i++)
        {
            if (parts[i] is "layers" or "h" && int.TryParse(parts[i + 1], out int n))
            {
                return n;
            }
        }

        return null;
    }

    [TestMethod]
    [DataRow("/model/layers.3/self_attn/q_proj/MatMul", "MatMul", "onnx::MatMul_123", "model.layers.3.self_attn.q_proj", 3)]
    [DataRow("/model/layers.0/attn/qkv_proj/MatMul", "MatMul", "model.layers.0.attn.qkv_proj.MatMul.weight", "model.layers.0.attn.qkv_proj", 0)]
    [DataRow("/model/layers.12/mlp/down_proj/MatMulNBits", "MatMulNBits", "model.layers.12.mlp.down_proj.MatMul.weight_Q4", "model.layers.12.mlp.down_proj", 12)]
    [DataRow("GptAttention_0", "Attention", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn", 0)]
    [DataRow("FullyConnect_MatMul_3", "MatMul", "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj", 1)]
    [DataRow("", "MatMul", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj", 0)]
    [DataRow("", "MatMul", "l1.dn.w", "model.layers.1.mlp.down_proj", 1)]
    [DataRow("", "MatMul", "l0.q.w", "model.layers.0.self_attn.q_proj", 0)]
    [DataRow("/decoder/block.1/layer.1/EncDecAttention/q/MatMul", "MatMul", "onnx::MatMul_2201", "decoder.block.1.layer.1.EncDecAttention.q", 1)]
    [DataRow("/encoder/block.0/layer.1/DenseReluDense/wo/MatMul", "MatMul", "onnx::MatMul_990", "encoder.block.0.layer.1.DenseReluDense.wo", 0)]
    [DataRow("/block.2/layer.0/SelfAttention/o/MatMul", "MatMul", "onnx::MatMul_77", "block.2.layer.0.SelfAttention.o", 2)]
    [DataRow("/lm_head/MatMul", "MatMul", "onnx::MatMul_135", "lm_head", null)]
    [DataRow("", "MatMul", "lm_head_weight", "lm_head", null)]
    public void Resolve_ExporterNames_GivesPeftModuleName(string node, string op, string weight, string expected, int? layer)
    {
        ModuleName name = ModuleNaming.Resolve(new NamingHints { NodeName = node, OpType = op, WeightName = weight });
        Assert.AreEqual(expected, name.Name);
        Assert.AreEqual(layer, name.LayerIndex);
    }

    [TestMethod]
    public void Resolve_NoLayerInNames_UsesStructuralLayer()
    {
        ModuleName name = ModuleNaming.Resolve(new NamingHints { NodeName = "", WeightName = "attn.q.weight", StructuralLayer = 2 });
        Assert.AreEqual("model.layers.2.attn.q_proj", name.Name);
        Assert.AreEqual(ModuleRole.Attention, name.Role);
    }

    [TestMethod]
    [DataRow("lm_head", true)]
    [DataRow("model.layers.0.mlp.up_proj", false)]
    public void IsOutputHead_ByName(string module, bool head) => Assert.AreEqual(head, ModuleNaming.IsOutputHead(module));
}
