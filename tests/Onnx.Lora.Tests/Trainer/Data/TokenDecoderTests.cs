using System.Text.Json;
using Onnx.Lora.Trainer;
using Onnx.Lora.Data;

namespace Onnx.Lora.Tests.Trainer.Data;

/// <summary>
/// The tokenizer.json decoder chain against what Hugging Face tokenizers documents and produces for these inputs
/// (expected strings are those of tokenizers' own decoder tests: decoders/byte_fallback.rs, strip.rs, metaspace.rs,
/// byte_level.rs).
/// </summary>
[TestClass]
public sealed class TokenDecoderTests
{
    // The decoder of every Llama / Mistral tokenizer.json (and of the llama fixtures in ../shared/fixtures).
    private const string LlamaDecoder = """
        {"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},
        {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}
        """;

    private static string Decode(string decoderJson, params string[] tokens)
    {
        using JsonDocument doc = JsonDocument.Parse(decoderJson);
        return TokenDecoder.Read("t.json", doc.RootElement)!.Decode(tokens);
    }

    [TestMethod]
    public void Decode_LlamaChain_ReplacesMetaspaceJoinsBytesAndStripsFirstSpace()
    {
        Assert.AreEqual("Hello world\n▁é", Decode(LlamaDecoder, "▁Hello", "▁world", "<0x0A>", "<0xE2>", "<0x96>", "<0x81>", "<0xC3>", "<0xA9>"));
    }

    [TestMethod]
    public void Decode_ByteFallbackInvalidUtf8_GivesReplacementChar()
    {
        Assert.AreEqual("a\uFFFD", Decode("""{"type":"ByteFallback"}""", "a", "<0xE2>"));
    }

    [TestMethod]
    public void Decode_Metaspace_ReplacesAndDropsOnlyTheAddedPrefix()
    {
        Assert.AreEqual("Hey friend", Decode("""{"type":"Metaspace","replacement":"▁","prepend_scheme":"always"}""", "▁Hey", "▁friend"));
        Assert.AreEqual(" Hey friend", Decode("""{"type":"Metaspace","replacement":"▁","prepend_scheme":"never"}""", "▁Hey", "▁friend"));
    }

    [TestMethod]
    public void Decode_ByteLevel_MapsGpt2AlphabetBackToUtf8()
    {
        // 'Ġ' is byte 0x20, 'Ċ' is 0x0A; "Ã©" are the two bytes of 'é'.
        Assert.AreEqual(" hello\ncafé", Decode("""{"type":"ByteLevel"}""", "Ġhello", "Ċ", "caf", "Ã©"));
    }

    [TestMethod]
    public void Read_UnknownDecoder_IsRefusedWithItsName()
    {
        var e = Assert.ThrowsExactly<DataException>(() => Decode("""{"type":"WordPiece"}""", "a"));
        StringAssert.Contains(e.Message, "WordPiece");
    }
}
