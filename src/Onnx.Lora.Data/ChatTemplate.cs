namespace Onnx.Lora.Data;

using static ChatTemplateSyntax;

/// <summary>One chat message.</summary>
/// <param name="Role">system, user, assistant (or any role the template knows).</param>
/// <param name="Content">Message text.</param>
public sealed record ChatMessage(string Role, string Content);

/// <summary>A rendered conversation and the char spans whose tokens carry loss (assistant replies).</summary>
/// <param name="Text">The rendered text.</param>
/// <param name="TrainableSpans">[Start, End) char ranges of assistant content (plus what the template emits after it in the same message: end-of-turn / EOS).</param>
public sealed record RenderedChat(string Text, IReadOnlyList<(int Start, int End)> TrainableSpans);

/// <summary>
/// A small, safe renderer for the Jinja chat templates found in tokenizer_config.json (Llama-2, ChatML, Zephyr,
/// Mistral, Gemma style): text, <c>{{ expr }}</c>, <c>{% if/elif/else %}</c>, <c>{% for x in xs %}</c> with
/// <c>loop.index0/index/first/last/length</c>, <c>{% set %}</c> (incl. <c>namespace()</c> attributes),
/// <c>{% generation %}</c> blocks, whitespace control (<c>{%-</c>, <c>-%}</c>) and HF's trim_blocks/lstrip_blocks,
/// string/number/list/dict literals, <c>+ - * / % ~</c>, comparisons, <c>and/or/not/in/is</c>, conditional
/// expressions, indexing and slicing, string methods (strip, upper, lower, title, startswith, endswith, split,
/// replace), dict methods (items, keys, values, get), filters (trim, length, upper, lower, title, capitalize,
/// tojson, string, int, default, first, last, join, list, replace) and <c>raise_exception</c>. It evaluates only
/// these constructs — no attribute access to .NET objects, no imports — so a template cannot do anything but
/// produce text. Anything else raises a <see cref="DataException"/> naming the construct and its position.
/// </summary>
/// <remarks>
/// Loss masking: when the template has <c>{% generation %}</c> blocks, their output is trainable. Otherwise, in each
/// loop iteration whose item is an assistant message, the output from the first occurrence of the message's
/// (stripped) content to the end of that iteration is trainable — the reply and the end-of-turn/EOS the template
/// writes after it, but not the role header before it.
/// </remarks>
public sealed class ChatTemplate
{
    /// <summary>
    /// The template used when the tokenizer has none: ChatML turns, BOS first, EOS after each assistant turn:
    /// <c>&lt;s&gt;&lt;|im_start|&gt;user\nHi&lt;|im_end|&gt;\n&lt;|im_start|&gt;assistant\nHello&lt;|im_end|&gt;&lt;/s&gt;\n</c>.
    /// </summary>
    public const string DefaultTemplate =
        "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}" +
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private readonly List<TemplateNode> _nodes;
    private readonly bool _hasGenerationBlocks;

    private ChatTemplate(string source, List<TemplateNode> nodes, bool hasGenerationBlocks)
    {
        Source = source;
        _nodes = nodes;
        _hasGenerationBlocks = hasGenerationBlocks;
    }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>Parses <paramref name="template"/>.</summary>
    /// <exception cref="DataException">A syntax error or unsupported construct, with its position.</exception>
    public static ChatTemplate Parse(string template)
    {
        ArgumentNullException.ThrowIfNull(template);
        var parser = new ChatTemplateParser(template);
        List<TemplateNode> nodes = parser.ParseAll();
        return new ChatTemplate(template, nodes, parser.SawGeneration);
    }

    /// <summary>Renders <paramref name="messages"/>.</summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="bosToken">Value of <c>bos_token</c> ("" when null).</param>
    /// <param name="eosToken">Value of <c>eos_token</c> ("" when null).</param>
    /// <param name="addGenerationPrompt">Value of <c>add_generation_prompt</c>.</param>
    /// <exception cref="DataException">The template raised an exception or hit an unsupported operation.</exception>
    public RenderedChat Render(IReadOnlyList<ChatMessage> messages, string? bosToken, string? eosToken, bool addGenerationPrompt = false)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var scope = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["bos_token"] = bosToken ?? "",
            ["eos_token"] = eosToken ?? "",
            ["add_generation_prompt"] = addGenerationPrompt,
        };
        var ctx = new ChatTemplateRenderer(scope);
        ctx.Run(_nodes);
        string text = ctx.Output.ToString();
        List<(int, int)> spans = _hasGenerationBlocks ? ctx.GenerationSpans : ctx.AssistantSpans(text);
        return new RenderedChat(text, spans);
    }
}
