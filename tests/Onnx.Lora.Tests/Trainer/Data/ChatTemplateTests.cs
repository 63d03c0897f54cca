using Onnx.Lora.Tests.Support;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>Chat templates rendered against the outputs their authors document (hand-expanded here).</summary>
[TestClass]
public sealed class ChatTemplateTests
{
    private static readonly ChatMessage[] s_conversation =
    [
        new("system", "You are kind."),
        new("user", "Hi"),
        new("assistant", "Hello!"),
        new("user", "Bye"),
        new("assistant", "See you."),
    ];

    [TestMethod]
    public void Render_FixtureLlama2Template_ProducesLlama2Format()
    {
        TextTokenizer tokenizer = TextTokenizer.Load(Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json"));
        Assert.IsNotNull(tokenizer.ChatTemplate);
        RenderedChat chat = ChatTemplate.Parse(tokenizer.ChatTemplate).Render(s_conversation, tokenizer.BosToken, tokenizer.EosToken);

        Assert.AreEqual("<s>[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST] See you. </s>", chat.Text);
        string[] trainable = chat.TrainableSpans.Select(s => chat.Text[s.Start..s.End]).ToArray();
        CollectionAssert.AreEqual(new[] { "Hello! </s>", "See you. </s>" }, trainable);
    }

    [TestMethod]
    public void Render_FixtureLlama2TemplateWithTwoUsersInARow_RaisesTemplateError()
    {
        TextTokenizer tokenizer = TextTokenizer.Load(Fixtures.Path("ortgenai-tiny-random-llama-fp32", "tokenizer.json"));
        var template = ChatTemplate.Parse(tokenizer.ChatTemplate!);
        var e = Assert.ThrowsExactly<DataException>(() => template.Render([new("user", "a"), new("user", "b")], "<s>", "</s>"));
        StringAssert.Contains(e.Message, "Conversation roles must alternate");
    }

    [TestMethod]
    public void Render_ZephyrTemplateWithTrimBlocks_KeepsOnlyExpressionNewlines()
    {
        const string zephyr = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n" +
            "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n" +
            "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
        RenderedChat chat = ChatTemplate.Parse(zephyr).Render([new("user", "Hi"), new("assistant", "Hello")], "<s>", "</s>");
        Assert.AreEqual("<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n", chat.Text);
        Assert.AreEqual("Hello</s>\n", chat.Text[chat.TrainableSpans[0].Start..chat.TrainableSpans[0].End]);

        RenderedChat prompt = ChatTemplate.Parse(zephyr).Render([new("user", "Hi")], "<s>", "</s>", addGenerationPrompt: true);
        Assert.AreEqual("<|user|>\nHi</s>\n<|assistant|>\n", prompt.Text);
    }

    [TestMethod]
    public void Render_IndentedBlockTags_LstripBlocksRemovesIndentation()
    {
        // Jinja with trim_blocks + lstrip_blocks (HF's settings): the indentation before block tags and the newline
        // after them vanish; text and expression output keep theirs.
        const string t = "{% for m in messages %}\n    {% if m.role == 'user' %}\n  U={{ m.content }}\n    {% endif %}\n{% endfor %}";
        RenderedChat chat = ChatTemplate.Parse(t).Render([new("user", "a"), new("user", "b")], null, null);
        Assert.AreEqual("  U=a\n  U=b\n", chat.Text);
    }

    [TestMethod]
    public void Render_ChatMLWithDashTrimmingAndNamespace_MatchesHandExpansion()
    {
        const string chatml = "{%- set ns = namespace(sys=false) -%}\n{%- for m in messages -%}\n  {%- if m.role == 'system' -%}{%- set ns.sys = true -%}{%- endif -%}\n" +
            "  {{- '<|im_start|>' ~ m.role ~ '\\n' ~ m.content | trim ~ '<|im_end|>\\n' -}}\n{%- endfor -%}\n" +
            "{%- if not ns.sys and messages | length > 1 %}{{ '(no system)' }}{% endif -%}\n{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}";
        RenderedChat chat = ChatTemplate.Parse(chatml).Render([new("user", " Hi "), new("assistant", "Yo")], null, null);
        Assert.AreEqual("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n(no system)", chat.Text);
        Assert.AreEqual("Yo<|im_end|>\n", chat.Text[chat.TrainableSpans[0].Start..chat.TrainableSpans[0].End]);
    }

    [TestMethod]
    public void Render_GenerationBlocks_AreTheTrainableSpans()
    {
        const string t = "{% for m in messages %}{% if m['role'] == 'assistant' %}A: {% generation %}{{ m['content'] }}.{% endgeneration %}{% else %}U: {{ m['content'] }}{% endif %}{{ '\\n' }}{% endfor %}";
        RenderedChat chat = ChatTemplate.Parse(t).Render([new("user", "q"), new("assistant", "r")], null, null);
        Assert.AreEqual("U: q\nA: r.\n", chat.Text);
        Assert.AreEqual(1, chat.TrainableSpans.Count);
        Assert.AreEqual("r.", chat.Text[chat.TrainableSpans[0].Start..chat.TrainableSpans[0].End]);
    }

    [TestMethod]
    public void Render_DefaultTemplate_IsChatMLWithBosAndEos()
    {
        RenderedChat chat = ChatTemplate.Parse(ChatTemplate.DefaultTemplate).Render([new("user", "Hi"), new("assistant", "Hello")], "<s>", "</s>");
        Assert.AreEqual("<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|></s>\n", chat.Text);
        Assert.AreEqual("Hello<|im_end|></s>\n", chat.Text[chat.TrainableSpans[0].Start..chat.TrainableSpans[0].End]);
    }

    [TestMethod]
    public void Parse_MacroStatement_ThrowsNamingTheConstruct()
    {
        var e = Assert.ThrowsExactly<DataException>(() => ChatTemplate.Parse("{% macro f() %}x{% endmacro %}"));
        StringAssert.Contains(e.Message, "macro");
        StringAssert.Contains(e.Message, "not supported");
    }

    [TestMethod]
    public void Render_UnknownFilter_ThrowsNamingTheFilter()
    {
        var e = Assert.ThrowsExactly<DataException>(() => ChatTemplate.Parse("{{ messages | wordwrap }}").Render([new("user", "x")], null, null));
        StringAssert.Contains(e.Message, "wordwrap");
    }
}
