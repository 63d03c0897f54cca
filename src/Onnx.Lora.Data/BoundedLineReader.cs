using System.Text;
using Onnx.Lora.Ir.IO;

namespace Onnx.Lora.Data;

/// <summary>
/// Reads a text file line by line without ever holding more than <c>maxChars</c> of one line: a hostile or broken
/// file with a multi-gigabyte "line" (no newline at all) is reported as an over-long row instead of exhausting memory.
/// </summary>
internal static class BoundedLineReader
{
    /// <summary>One line: its 1-based number and its text, or null text when it was longer than the bound (skipped).</summary>
    public readonly record struct Line(int Number, string? Text);

    /// <summary>Enumerates the lines of <paramref name="path"/> (UTF-8; \n, \r\n or \r ends a line).</summary>
    public static IEnumerable<Line> Read(string path, int maxChars)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxChars);
        // A FIFO or device (/dev/zero: an endless line of NULs) is refused before reading; the file's size is then known.
        using FileStream stream = InputFile.OpenRead(path, "Dataset", long.MaxValue, m => new DataException(m));
        using var reader = new StreamReader(stream, Utf8LineCheck.Encoding, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
        var line = new StringBuilder();
        char[] buffer = new char[1 << 16];
        int number = 1;
        bool tooLong = false, sawAny = false, afterCarriageReturn = false;
        int read;
        while ((read = ReadChunk(reader, buffer, path)) > 0)
        {
            int start = 0;
            for (int i = 0; i < read; i++)
            {
                char c = buffer[i];
                if (c is not ('\n' or '\r'))
                {
                    afterCarriageReturn = false;
                    continue;
                }

                bool secondHalfOfCrLf = c == '\n' && afterCarriageReturn;
                afterCarriageReturn = c == '\r';
                if (secondHalfOfCrLf)
                {
                    start = i + 1;
                    continue;
                }

                Append(line, buffer.AsSpan(start, i - start), maxChars, ref tooLong);
                yield return new Line(number++, tooLong ? null : line.ToString());
                line.Clear();
                tooLong = false;
                sawAny = false;
                start = i + 1;
            }

            if (start < read)
            {
                sawAny = true;
                Append(line, buffer.AsSpan(start, read - start), maxChars, ref tooLong);
            }
        }

        if (sawAny || line.Length > 0 || tooLong)
        {
            yield return new Line(number, tooLong ? null : line.ToString());
        }
    }

    private static int ReadChunk(StreamReader reader, char[] buffer, string path)
    {
        try
        {
            return reader.Read(buffer, 0, buffer.Length);
        }
        catch (DecoderFallbackException e)
        {
            string where = Utf8LineCheck.FirstInvalid(path) is (int line, long column) ? $"{path}:{line}: byte {column}" : path;
            throw new DataException($"{where}: the text is not valid UTF-8 (a JSONL file is UTF-8; re-encode it, e.g. iconv -f latin1 -t utf-8).", e);
        }
    }

    private static void Append(StringBuilder line, ReadOnlySpan<char> chars, int maxChars, ref bool tooLong)
    {
        if (tooLong)
        {
            return;
        }

        if (line.Length + chars.Length > maxChars)
        {
            tooLong = true;
            line.Clear();
            return;
        }

        line.Append(chars);
    }
}
