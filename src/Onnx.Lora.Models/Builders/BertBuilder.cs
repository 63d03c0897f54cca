using System.Globalization;
using Onnx.Lora.Ir;

namespace Onnx.Lora.Models.Builders;

/// <summary>Sizes and options of a BERT-style encoder with a sequence-classification head.</summary>
public sealed record BertConfig : TransformerConfig
{
    /// <inheritdoc />
    public override int Intermediate { get; init; } = 128;

    /// <inheritdoc />
    public override float LayerNormEps { get; init; } = 1e-12f;

    /// <summary>Token type (segment) vocabulary.</summary>
    public int TypeVocab { get; init; } = 2;

    /// <summary>Number of classifier labels.</summary>
    public int NumLabels { get; init; } = 3;

    /// <summary>How linear weight initializers are named.</summary>
    public InitializerNaming Naming { get; init; } = InitializerNaming.Anonymous;

    /// <inheritdoc />
    public override void Validate()
    {
        base.Validate();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(TypeVocab);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(NumLabels);
    }
}

/// <summary>
/// Builds a BERT encoder with a sequence-classification head as torch.onnx exports Hugging Face's
/// BertForSequenceClassification: word + position + token-type embeddings, post-LayerNorm encoder layers with
/// query/key/value/output MatMul + Add (weights pre-transposed to [in, out]), GELU MLP, a tanh pooler over the first
/// token and a classifier. Inputs <c>input_ids</c>, <c>attention_mask</c>, <c>token_type_ids</c> int64
/// [batch_size, sequence_length]; output <c>logits</c> [batch_size, num_labels].
/// </summary>
/// <remarks>Nodes are named <c>/bert/encoder/layer.N/attention/self/query/MatMul</c>, <c>/classifier/MatMul</c>.</remarks>
public static class BertBuilder
{
    // HF BERT's extended attention mask uses the dtype minimum; -1e9 keeps sums finite.
    private const float MaskValue = -1e9f;

    /// <summary>Builds the model with seeded random weights.</summary>
    public static Model Build(BertConfig config) => Build(config, new RandomWeightSource(config?.Seed ?? 0));

    /// <summary>Builds the model with weights from <paramref name="weights"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public static Model Build(BertConfig config, IWeightSource weights)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(weights);
        config.Validate();
        var c = config;
        var b = new GraphBuilder("main_graph", c.Opset);
        var constants = new ConstantCache(b);
        int anonymous = 200;

        Value LinearLayer(Value x, string scope, string key, int inFeatures, int outFeatures)
        {
            string name = c.Naming == InitializerNaming.Named ? $"{key}.weight" : "onnx::MatMul_" + (anonymous++).ToString(CultureInfo.InvariantCulture);
            Value w = b.Weight(weights, name, new($"{key}.weight", WeightRole.Linear, [inFeatures, outFeatures]));
            Value bias = b.Weight(weights, $"{key}.bias", new($"{key}.bias", WeightRole.Bias, [outFeatures]));
            return b.Node(scope, "Add", [bias, b.Node(scope, "MatMul", [x, w])]);
        }

        Value ids = b.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        Value mask = b.Input("attention_mask", DataType.Int64, "batch_size", "sequence_length");
        Value types = b.Input("token_type_ids", DataType.Int64, "batch_size", "sequence_length");

        const string Emb = "/bert/embeddings";
        Value words = b.Weight(weights, "bert.embeddings.word_embeddings.weight", new("bert.embeddings.word_embeddings.weight", WeightRole.Embedding, [c.Vocab, c.Hidden]));
        Value pos = b.Weight(weights, "bert.embeddings.position_embeddings.weight", new("bert.embeddings.position_embeddings.weight", WeightRole.Embedding, [c.MaxPositions, c.Hidden]));
        Value typ = b.Weight(weights, "bert.embeddings.token_type_embeddings.weight", new("bert.embeddings.token_type_embeddings.weight", WeightRole.Embedding, [c.TypeVocab, c.Hidden]));
        Value seq = b.Node(Emb, "Gather", [b.Node(Emb, "Shape", [ids]), constants.Int64Scalar("const_i1", 1)], [Attr.Int("axis", 0)]);
        Value positions = b.Node(Emb, "Range", [constants.Int64Scalar("const_i0", 0), seq, constants.Int64Scalar("const_i1", 1)]);
        Value x = b.Node(Emb, "Add", [b.Node($"{Emb}/word_embeddings", "Gather", [words, ids]), b.Node($"{Emb}/token_type_embeddings", "Gather", [typ, types])]);
        x = b.Node(Emb, "Add", [x, b.Node($"{Emb}/position_embeddings", "Gather", [pos, positions])]);
        x = b.LayerNorm(weights, $"{Emb}/LayerNorm", x, "bert.embeddings.LayerNorm", c.Hidden, c.LayerNormEps);
        Value bias = Gpt2Builder.PaddingBias(b, constants, "/bert", mask, MaskValue);

        for (int layer = 0; layer < c.Layers; layer++)
        {
            string scope = $"/bert/encoder/layer.{layer}";
            string key = $"bert.encoder.layer.{layer}";
            Value q = LinearLayer(x, $"{scope}/attention/self/query", $"{key}.attention.self.query", c.Hidden, c.Hidden);
            Value k = LinearLayer(x, $"{scope}/attention/self/key", $"{key}.attention.self.key", c.Hidden, c.Hidden);
            Value v = LinearLayer(x, $"{scope}/attention/self/value", $"{key}.attention.self.value", c.Hidden, c.Hidden);
            Value context = Gpt2Builder.Attention(b, constants, $"{scope}/attention/self", [q, k, v], bias, c.Heads, c.HeadDim, c.Hidden);
            Value attn = LinearLayer(context, $"{scope}/attention/output/dense", $"{key}.attention.output.dense", c.Hidden, c.Hidden);
            x = b.LayerNorm(weights, $"{scope}/attention/output/LayerNorm", b.Node($"{scope}/attention/output", "Add", [attn, x]), $"{key}.attention.output.LayerNorm", c.Hidden, c.LayerNormEps);
            Value inter = LinearLayer(x, $"{scope}/intermediate/dense", $"{key}.intermediate.dense", c.Hidden, c.Intermediate);
            Value act = b.Gelu($"{scope}/intermediate/intermediate_act_fn", inter, constants.Float);
            Value output = LinearLayer(act, $"{scope}/output/dense", $"{key}.output.dense", c.Intermediate, c.Hidden);
            x = b.LayerNorm(weights, $"{scope}/output/LayerNorm", b.Node($"{scope}/output", "Add", [output, x]), $"{key}.output.LayerNorm", c.Hidden, c.LayerNormEps);
        }

        // Pooler: tanh(dense(hidden state of the first token)).
        Value first = b.Node("/bert/pooler", "Gather", [x, constants.Int64Scalar("const_i0", 0)], [Attr.Int("axis", 1)]);
        Value pooled = b.Node("/bert/pooler/activation", "Tanh", [LinearLayer(first, "/bert/pooler/dense", "bert.pooler.dense", c.Hidden, c.Hidden)]);
        Value logits = LinearLayer(pooled, "/classifier", "classifier", c.Hidden, c.NumLabels);
        b.Output(logits, "logits", DataType.Float, "batch_size", c.NumLabels);
        return b.Model;
    }
}
