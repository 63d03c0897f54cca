using System.Text;

namespace Onnx.Lora.Data;

/// <summary>
/// Strict UTF-8 for text data: the default decoder turns invalid bytes into U+FFFD silently, so a Latin-1 or binary
/// file would train on replacement characters. Reading goes through <see cref="Encoding"/>, which throws; the slow
/// search for the offending line runs only then.
/// </summary>
internal static class Utf8LineCheck
{
    /// <summary>UTF-8 that throws on invalid bytes (no BOM written; a BOM read is skipped by the reader).</summary>
    public static readonly Encoding Encoding = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>
    /// The 1-based line (numbered as <see cref="BoundedLineReader"/> numbers them: \n, \r\n or \r ends a line) and
    /// byte column of the first invalid UTF-8 sequence of <paramref name="path"/>, or null when the file is valid.
    /// Line ends never occur inside a multi-byte sequence, so each line is decoded on its own.
    /// </summary>
    public static (int Line, long Column)? FirstInvalid(string path)
    {
        Decoder decoder = Encoding.GetDecoder();
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        byte[] buffer = new byte[1 << 16];
        char[] chars = new char[Encoding.GetMaxCharCount(buffer.Length)];
        int line = 1;
        long column = 0;
        bool afterCarriageReturn = false;
        int read;
        while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
        {
            int start = 0;
            for (int i = 0; i <= read; i++)
            {
                bool end = i == read;
                byte b = end ? (byte)0 : buffer[i];
                if (!end && b is not ((byte)'\n' or (byte)'\r'))
                {
                    continue;
                }

                // Decode [start, i): at a line end the sequence must be complete (flush); at a chunk end it may continue.
                if (FirstBadByte(decoder, buffer.AsSpan(start, i - start), chars, flush: !end) is int bad)
                {
                    return (line, column + bad + 1);
                }

                column += i - start;
                if (end)
                {
                    break;
                }

                if (!(b == (byte)'\n' && afterCarriageReturn))
                {
                    line++;
                }

                afterCarriageReturn = b == (byte)'\r';
                column = 0;
                start = i + 1;
            }

            if (read > 0 && buffer[read - 1] is not ((byte)'\n' or (byte)'\r'))
            {
                afterCarriageReturn = false;
            }
        }

        return FirstBadByte(decoder, [], chars, flush: true) is int last ? (line, column + last + 1) : null;
    }

    // The 0-based index in `bytes` of the invalid sequence (negative: it began in an earlier chunk), or null.
    private static int? FirstBadByte(Decoder decoder, ReadOnlySpan<byte> bytes, Span<char> chars, bool flush)
    {
        try
        {
            decoder.GetChars(bytes, chars, flush);
            return null;
        }
        catch (DecoderFallbackException e)
        {
            return Math.Max(e.Index, 0);
        }
    }
}
