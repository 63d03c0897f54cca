using System.Text;
using Onnx.Lora.Formats.Peft;
using Onnx.Lora.Data;

namespace Onnx.Lora.Bench.Fuzz;

/// <summary>Text spliced into JSON strings by the text targets: chat-template syntax, special tokens, hostile regexes.</summary>
internal static class TextFragments
{
    public static readonly string[] Template =
    [
        "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{ bos_token }}", "{{ eos_token }}", "{% for m in messages %}", "{% endfor %}",
        "{% if messages %}", "{% elif x %}", "{% else %}", "{% endif %}", "{% set x = messages[0] %}", "{% generation %}", "{% endgeneration %}",
        "{{ raise_exception('bad') }}", "{{ messages[0]['content'][::-1] }}", "{{ messages[-1].content|length }}", "{{ 1/0 }}", "{{ 5 % 0 }}",
        "{{ 'a' * 1000000000 }}", "{{ range(100000000)|length }}", "{% for i in range(1000000000) %}x{% endfor %}", "{{ 99999999999999999999 }}",
        "{{ 1e999 }}", "{{ -9223372036854775808 // -1 }}", "{{ x.y.z }}", "{{ none.x }}", "{{ messages|tojson }}", "{{ ((((((((1)))))))) }}",
        "{{ [1,2][5] }}", "{{ {'a':1}['b'] }}", "{{ 'x'|int }}", "{{ namespace(a=1).a }}", "{{ loop.index }}", "{{ 'abc'[1:999999999999] }}",
        "{% set ns = namespace(x=1) %}{% set ns.x = 2 %}", "{{ messages[0]['role'] is defined }}", "{{ x if y }}", "{{ 'a' ~ 1 }}",
        string.Concat(Enumerable.Repeat("(", 5000)), string.Concat(Enumerable.Repeat("{% if 1 %}", 3000)), string.Concat(Enumerable.Repeat("[", 5000)),
        "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>", "\u2581", "\uFB01", "e\u0301", "\U0001F600", "\uFFFD", "\0",
    ];

    public static readonly string[] Regex = ["(", "[", "*", "(a+)+$", "(a|a)*b", @"\p{L}+", @"(?<=a)b", @"\", ".*", "(?i)Q_PROJ", "q_proj|v_proj", "^$"];
}

/// <summary>JSONL training data (JsonlDataset.Load with the stories260K SentencePiece tokenizer and a chat template).</summary>
public sealed class JsonlFuzzTarget : FuzzTarget
{
    private static readonly string[] s_interesting =
    [
        "\"user\"", "\"assistant\"", "\"system\"", "\"tool\"", "\"\"", "\" \"", "[]", "{}", "[{\"role\":\"assistant\",\"content\":\"ok\"}]",
        "[{\"role\":\"user\"}]", "[{\"role\":\"assistant\",\"content\":\"\"}]", "[\"hi\"]", "{\"role\":\"user\",\"content\":\"x\"}", "\"<s>\"", "\"</s>\"",
        "{\"text\":\"a\"}", "\"\\u0000\"", "\"\\ud83d\"",
    ];

    private static readonly string[] s_fields = ["text", "prompt", "completion", "messages", "instruction", "input", "output", "role", "content"];

    private readonly byte[] _seed = TextFuzzSeeds.Jsonl();
    private readonly string _path;
    private readonly TextTokenizer _tokenizer;
    private readonly DatasetOptions _options;

    public JsonlFuzzTarget() : base("jsonl")
    {
        _path = Path.Combine(Folder, "data.jsonl");
        _tokenizer = TextTokenizer.Load(Path.Combine(BenchArgs.RepoRoot(), "models", "default", "stories260K", "tok512.model"));
        _options = new DatasetOptions { MaxTokens = 256, ModelVocabSize = 512, ChatTemplateOverride = TextFuzzSeeds.ChatTemplate, MaxReportedErrors = 5 };
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        File.WriteAllBytes(_path, input);
        List<TokenizedExample> examples = JsonlDataset.Load(_path, _tokenizer, _options);
        foreach (TokenizedExample e in examples)
        {
            if (e.InputIds.Length != e.Labels.Length || e.InputIds.Length > _options.MaxTokens || e.InputIds.Any(id => id < 0 || id >= _options.ModelVocabSize))
            {
                throw new InvalidOperationException($"{e.Source}: an accepted example breaks the loader's guarantees ({e.InputIds.Length} ids, {e.Labels.Length} labels).");
            }
        }
    }

    protected override byte[] MutateStructure(byte[] input, Random rng)
    {
        List<byte[]> lines = Split(input);
        int row = rng.Next(lines.Count);
        switch (rng.Next(10))
        {
            case 0:
                lines.Insert(rng.Next(lines.Count + 1), lines[row]);
                break;
            case 1 when lines.Count > 1:
                lines.RemoveAt(row);
                break;
            case 2:
                // A blank line, a CR-only line end, a BOM, or two rows joined on one line.
                byte[][] extras = [[], [(byte)'\r'], [0xEF, 0xBB, 0xBF], "  \t "u8.ToArray()];
                lines.Insert(rng.Next(lines.Count + 1), extras[rng.Next(extras.Length)]);
                break;
            case 3 when lines.Count > 1 && row + 1 < lines.Count:
                lines[row] = [.. lines[row], .. lines[row + 1]];
                lines.RemoveAt(row + 1);
                break;
            case 4:
            {
                // Rename a field to another known one (a row of one format that looks like another).
                string text = Encoding.UTF8.GetString(lines[row]);
                string from = s_fields[rng.Next(s_fields.Length)], to = s_fields[rng.Next(s_fields.Length)];
                lines[row] = Encoding.UTF8.GetBytes(text.Replace($"\"{from}\"", $"\"{to}\"", StringComparison.Ordinal));
                break;
            }

            default:
                lines[row] = JsonMutator.Mutate(lines[row], rng, s_interesting, TextFragments.Template);
                break;
        }

        return Join(lines);
    }

    private static List<byte[]> Split(byte[] input)
    {
        var lines = new List<byte[]>();
        int start = 0;
        for (int i = 0; i < input.Length; i++)
        {
            if (input[i] == (byte)'\n')
            {
                lines.Add(input[start..i]);
                start = i + 1;
            }
        }

        if (start < input.Length || lines.Count == 0)
        {
            lines.Add(input[start..]);
        }

        return lines;
    }

    private static byte[] Join(List<byte[]> lines)
    {
        var result = new List<byte>();
        foreach (byte[] line in lines)
        {
            result.AddRange(line);
            result.Add((byte)'\n');
        }

        return [.. result];
    }
}

/// <summary>PEFT adapter_config.json beside a valid adapter_model.safetensors: ReadConfig, then import against the model's modules.</summary>
public sealed class AdapterConfigFuzzTarget : FuzzTarget
{
    private static readonly string[] s_interesting =
    [
        "\"LORA\"", "\"PREFIX_TUNING\"", "\"q_proj\"", "\"v_proj\"", "\"up_proj\"", "\"all-linear\"", "[\"q_proj\",\"v_proj\"]", "{\"q_proj\":4}",
        "{\"v_proj\":2}", "{\"(\":4}", "{\"(a+)+$\":4}", "{\".*\":0}", "{\"up_proj\":\"16\"}", "{\"up_proj\":1e400}", "{\"q_proj\":-4}", "{\"\":2}",
        "{\"model.layers.0.self_attn.q_proj\":8}", "true", "false", "0", "4", "-8", "1e-300", "[]", "{}", "null", "\"2\"",
    ];

    private readonly byte[] _seed;
    private readonly string _configPath;
    private readonly string _weightsPath;
    private readonly IReadOnlyList<LoraModuleInfo> _modules;

    public AdapterConfigFuzzTarget() : base("adapter_config")
    {
        _seed = TextFuzzSeeds.PeftConfig(Folder, out _modules);
        _configPath = Path.Combine(Folder, PeftAdapter.ConfigFile);
        _weightsPath = Path.Combine(Folder, PeftAdapter.WeightsFile);
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        File.WriteAllBytes(_configPath, input);
        PeftConfig config = PeftAdapter.ReadConfig(Folder);
        foreach (LoraModuleInfo m in _modules)
        {
            // What the CLI derives per module (convert-adapter, merge): rank, alpha and the scale PEFT would apply.
            int rank = config.RankOf(m.Module);
            _ = config.ScaleOf(m.Module, rank);
        }

        _ = PeftAdapter.ImportFile(_weightsPath, _modules);
    }

    protected override byte[] MutateStructure(byte[] input, Random rng) =>
        JsonMutator.Mutate(input, rng, s_interesting, rng.Next(2) == 0 ? TextFragments.Regex : ["q_proj", "v_proj", "up_proj", "\\.", "model.layers.0."]);
}

/// <summary>
/// A Hugging Face tokenizer.json with its tokenizer_config.json (chat template): TextTokenizer.Load, encode and decode a short
/// text, render the chat template. The input is tokenizer.json, a NUL byte, then tokenizer_config.json (no NUL: no config).
/// </summary>
public sealed class TokenizerJsonFuzzTarget : FuzzTarget
{
    /// <summary>Text encoded with every accepted tokenizer: specials, non-ASCII (byte fallback), a ligature, a long run.</summary>
    public const string SampleText = "Hello the world <s>Tom sat.</s> h\u00e9llo \u65e5\u672c \uFB01 e\u0301 \U0001F600 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!<|im_end|>";

    private static readonly string[] s_interesting =
    [
        "null", "\"BPE\"", "\"WordPiece\"", "\"Unigram\"", "{\"type\":\"NFKC\"}", "{\"type\":\"Lowercase\"}", "{\"type\":\"NFD\"}", "{\"type\":\"BertNormalizer\"}",
        "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\" \"},\"content\":\"\\u2581\"}", "{\"type\":\"Replace\",\"pattern\":{\"String\":\"\"},\"content\":\"x\"}",
        "{\"type\":\"Prepend\",\"prepend\":null}", "{\"type\":\"Prepend\"}", "{\"type\":\"Sequence\",\"normalizers\":{}}",
        "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true}", "{\"type\":\"ByteLevel\",\"use_regex\":false}",
        "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"first\",\"split\":true}", "{\"type\":\"Metaspace\",\"replacement\":\"\"}",
        "{\"type\":\"Metaspace\",\"replacement\":null}", "{\"type\":\"Metaspace\",\"replacement\":\"ab\",\"add_prefix_space\":false}",
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a+)+$\"},\"behavior\":\"Isolated\",\"invert\":false}",
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"}", "{\"type\":\"Split\",\"pattern\":{\"String\":\"\"},\"behavior\":\"Isolated\"}",
        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{L}+|\\\\s+|.\"},\"behavior\":\"Isolated\"}", "{\"type\":\"Split\",\"pattern\":{},\"behavior\":\"Isolated\"}",
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a-z]+|.\"},\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\",\"use_regex\":false}]}",
        "{\"type\":\"Whitespace\"}", "{\"type\":\"TemplateProcessing\",\"single\":[]}", "{\"type\":\"TemplateProcessing\",\"single\":[1,2]}",
        "{\"type\":\"TemplateProcessing\",\"single\":{}}", "{\"id\":0,\"content\":\"\"}", "{\"id\":-1,\"content\":\"x\"}", "{\"id\":99999,\"content\":\"<s>\"}",
        "{\"id\":2147483647,\"content\":\"big\"}", "{\"content\":\"<s>\",\"lstrip\":true}", "[\"a\",\"b\",\"c\"]", "[\"\",\"\"]", "\"a\"", "\"a b c\"", "\"\u2581 \"",
        "true", "2147483647", "-1", "\"<unk>\"", "\"<|im_start|>\"", "\"</s>\"", "\"nonexistent\"", "{\"content\":5}",
    ];

    private readonly byte[] _seed;
    private readonly string _tokenizerPath;
    private readonly string _configPath;
    private readonly List<ChatMessage> _conversation = [new("system", "Be brief."), new("user", "Hi there"), new("assistant", "Hello!")];

    public TokenizerJsonFuzzTarget() : base("tokenizer_json")
    {
        _seed = [.. TextFuzzSeeds.TokenizerJson(), 0, .. TextFuzzSeeds.TokenizerConfig()];
        _tokenizerPath = Path.Combine(Folder, "tokenizer.json");
        _configPath = Path.Combine(Folder, "tokenizer_config.json");
    }

    public override byte[] Seed => _seed;

    public override void Execute(byte[] input)
    {
        int nul = Array.IndexOf(input, (byte)0);
        File.WriteAllBytes(_tokenizerPath, nul < 0 ? input : input[..nul]);
        if (nul < 0)
        {
            File.Delete(_configPath);
        }
        else
        {
            File.WriteAllBytes(_configPath, input[(nul + 1)..]);
        }

        TextTokenizer tokenizer = TextTokenizer.Load(_tokenizerPath);
        var ids = new List<int>();
        var offsets = new List<int>();
        tokenizer.Encode(SampleText, ids, offsets);
        if (offsets.Count != ids.Count || offsets.Any(o => o < 0 || o >= SampleText.Length) || ids.Any(id => id < 0 || id >= tokenizer.VocabSize))
        {
            throw new InvalidOperationException($"Encode broke its contract: {ids.Count} ids, {offsets.Count} offsets, ids in [{ids.DefaultIfEmpty().Min()}, {ids.DefaultIfEmpty().Max()}], vocab {tokenizer.VocabSize}.");
        }

        _ = tokenizer.Decode(ids);
        if (tokenizer.ChatTemplate is string template)
        {
            // Only rendered: the trainer tokenizes a rendered chat after JsonlDataset's length bound, which the jsonl target covers.
            _ = ChatTemplate.Parse(template).Render(_conversation, tokenizer.BosToken, tokenizer.EosToken, addGenerationPrompt: true);
        }
    }

    protected override byte[] MutateStructure(byte[] input, Random rng)
    {
        int nul = Array.IndexOf(input, (byte)0);
        if (nul < 0)
        {
            return JsonMutator.Mutate(input, rng, s_interesting, TextFragments.Template);
        }

        byte[] tokenizer = input[..nul], config = input[(nul + 1)..];
        if (rng.Next(5) < 3)
        {
            tokenizer = JsonMutator.Mutate(tokenizer, rng, s_interesting, TextFragments.Template);
        }
        else
        {
            config = JsonMutator.Mutate(config, rng, s_interesting, TextFragments.Template);
        }

        return [.. tokenizer, 0, .. config];
    }
}
