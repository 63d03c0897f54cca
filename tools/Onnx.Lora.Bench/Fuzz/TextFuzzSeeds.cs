using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Onnx.Lora.Formats;
using Onnx.Lora.Formats.Peft;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>The valid text files the text-format fuzzers start from: a JSONL dataset, a PEFT config, a BPE tokenizer.json.</summary>
public static class TextFuzzSeeds
{
    /// <summary>
    /// A chat template in the style of Mistral / Llama-2 templates: a system message is taken out first, roles must
    /// alternate (raise_exception otherwise), contents are trimmed, ChatML markers, generation prompt.
    /// </summary>
    public const string ChatTemplate =
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
        "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}" +
        "{% if system_message %}{{ '<|im_start|>system\\n' + system_message | trim + '<|im_end|>\\n' }}{% endif %}" +
        "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}" +
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    /// <summary>Two rows of each format: text, prompt/completion, messages (with and without system), alpaca (with and without input).</summary>
    public static byte[] Jsonl()
    {
        string[] rows =
        [
            """{"text": "Once upon a time, there was a little girl named Lily."}""",
            """{"text": "Tom had a big red ball. He liked to play with it every day."}""",
            """{"prompt": "Once upon a time, a cat", "completion": " sat on the mat and purred."}""",
            """{"prompt": "", "completion": "The sun was warm and the sky was blue."}""",
            """{"messages": [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "Tell me about a dog."}, {"role": "assistant", "content": "The dog ran to the park."}]}""",
            """{"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, friend."}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye bye!"}]}""",
            """{"instruction": "Write one sentence about a bird.", "input": "", "output": "The bird sang a happy song."}""",
            """{"instruction": "Finish the story.", "input": "Lily found a box.", "output": "Inside was a tiny kitten."}""",
        ];
        return Encoding.UTF8.GetBytes(string.Join("\n", rows) + "\n");
    }

    /// <summary>
    /// Writes a PEFT adapter_model.safetensors with three DoRA modules of ranks 2, 4, 2 (use_dora applies to every module, as in PEFT) into
    /// <paramref name="folder"/> and returns a realistic adapter_config.json for it: r, lora_alpha, rank_pattern (a suffix
    /// and a regex key), alpha_pattern, use_rslora, use_dora, target_modules and the fields PEFT writes beside them.
    /// </summary>
    public static byte[] PeftConfig(string folder, out IReadOnlyList<Onnx.Lora.LoraModuleInfo> modules)
    {
        var weights = new LoraWeights(
        [
            new LoraModuleWeights("model.layers.0.self_attn.q_proj", 8, 8, 2, Ramp(16, 0.01f), Ramp(16, 0.02f), 1f, Ramp(8, 0.25f)),
            new LoraModuleWeights("model.layers.0.self_attn.v_proj", 8, 4, 4, Ramp(32, -0.01f), Ramp(16, 0.03f), 1f, Ramp(4, 0.5f)),
            new LoraModuleWeights("model.layers.0.mlp.up_proj", 8, 12, 2, Ramp(16, 0.05f), Ramp(24, -0.02f), 1f, Ramp(12, 0.75f)),
        ]);
        PeftAdapter.Export(weights, folder);
        modules = weights.Modules.Select(m => new Onnx.Lora.LoraModuleInfo
        {
            Module = m.Module, TargetNode = m.Module + "/MatMul", BaseWeight = m.Module + ".weight", Layout = Onnx.Lora.WeightLayout.InOut,
            InFeatures = m.InFeatures, OutFeatures = m.OutFeatures, Rank = m.Rank, Alpha = 8, LoraA = m.Module + ".lora_A", LoraB = m.Module + ".lora_B",
        }).ToList();
        var config = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject { ["mlp.up_proj"] = 16 },
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = "karpathy/tinyllamas/stories260K",
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layer_replication"] = null,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["loftq_config"] = new JsonObject(),
            ["lora_alpha"] = 8,
            ["lora_dropout"] = 0.05,
            ["megatron_config"] = null,
            ["megatron_core"] = "megatron.core",
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = 2,
            ["rank_pattern"] = new JsonObject { ["v_proj"] = 4, ["layers\\.0\\.self_attn\\.v_pro."] = 4 },
            ["revision"] = null,
            ["target_modules"] = new JsonArray("q_proj", "v_proj", "up_proj"),
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = true,
            ["use_rslora"] = true,
        };
        return Encoding.UTF8.GetBytes(config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>
    /// A Llama-style BPE tokenizer.json: normalizer Prepend("▁") + Replace(" "→"▁"), byte fallback (all 256
    /// &lt;0xXX&gt; tokens), letters, a few merges, added special tokens incl. ChatML markers, TemplateProcessing adding BOS.
    /// </summary>
    public static byte[] TokenizerJson()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++)
        {
            vocab[string.Create(CultureInfo.InvariantCulture, $"<0x{b:X2}>")] = 3 + b;
        }

        int next = 259;
        foreach (string piece in "▁ a b c d e f g h i j k l m n o p q r s t u v w x y z H L T , . ! ?".Split(' ').Select(p => p.Length == 0 ? "▁" : p).Distinct())
        {
            vocab[piece] = next++;
        }

        (string A, string B)[] merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("l", "l"), ("▁", "a"), ("o", "n"), ("i", "n"), ("▁", "s"), ("e", "r"), ("▁", "H")];
        foreach ((string a, string b) in merges)
        {
            vocab[a + b] = next++;
        }

        var added = new JsonArray();
        foreach ((string content, int id) in new[] { ("<unk>", 0), ("<s>", 1), ("</s>", 2), ("<|im_start|>", next), ("<|im_end|>", next + 1) })
        {
            added.Add(new JsonObject
            {
                ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            });
        }

        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(new JsonObject { ["type"] = "ByteFallback" }, new JsonObject { ["type"] = "Fuse" }) },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(merges.Select((m, i) => i % 2 == 0 ? (JsonNode)(m.A + " " + m.B) : new JsonArray(m.A, m.B)).ToArray()),
            },
        };
        return Encoding.UTF8.GetBytes(root.ToJsonString(new System.Text.Json.JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
    }

    /// <summary>tokenizer_config.json as transformers writes it: special tokens, add_bos_token, the chat template.</summary>
    public static byte[] TokenizerConfig()
    {
        var config = new JsonObject
        {
            ["add_bos_token"] = true,
            ["add_eos_token"] = false,
            ["bos_token"] = "<s>",
            ["eos_token"] = new JsonObject { ["content"] = "</s>", ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false },
            ["pad_token"] = "<unk>",
            ["unk_token"] = "<unk>",
            ["model_max_length"] = 2048,
            ["clean_up_tokenization_spaces"] = false,
            ["tokenizer_class"] = "LlamaTokenizer",
            ["chat_template"] = ChatTemplate,
        };
        return Encoding.UTF8.GetBytes(config.ToJsonString(new System.Text.Json.JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, WriteIndented = true }));
    }

    private static float[] Ramp(int count, float step) => Enumerable.Range(1, count).Select(i => i * step).ToArray();
}
