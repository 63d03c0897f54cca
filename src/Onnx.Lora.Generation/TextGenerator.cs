using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Formats;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Resources;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Data;

namespace Onnx.Lora.Generation;

/// <summary>
/// Generates text with a causal LM in ONNX Runtime (batch 1, CPU). A model with a KV cache (Optimum's decoder with past:
/// <c>past_key_values.N.key/value</c> inputs, <c>present.N.key/value</c> outputs) is decoded incrementally: the prompt
/// runs once with an empty past (prefill), then each step feeds one token and the previous step's present as past. Any
/// model can instead re-run the whole sequence per token (<see cref="GenerationOptions.UseKvCache"/> false, and the
/// only way for a model without a cache). LoRA adapters (<c>.onnx_adapter</c>) are activated through ORT's own
/// adapter API (<see cref="OrtLoraAdapter"/>, <see cref="RunOptions.AddActiveLoraAdapter"/>) on a model with adapter
/// slots, e.g. the <c>base-with-slots.onnx</c> of <c>export-adapter --serving</c>.
/// </summary>
/// <remarks>
/// NOTE: runs use <c>Run(RunOptions, ...)</c>, not IOBinding: ORT ignores active adapters under IOBinding (DESIGN.md).
/// Inputs wrap the generator's own reused arrays; per step only the small OrtValue wrappers are new, and the cache grows.
/// </remarks>
public sealed class TextGenerator : IDisposable
{
    /// <summary>Receives the logits of one position of a scored sequence (valid only during the call).</summary>
    public delegate void PositionLogitsHandler(int position, ReadOnlySpan<float> logits);

    private readonly InferenceSession _session;
    private readonly RunOptions _runOptions;
    private readonly List<OrtLoraAdapter> _adapters;
    private readonly string _modelPath;
    private readonly DecoderSignature _signature;
    private readonly string[] _inputNames;
    private readonly string[] _logitsOnly;
    private readonly string[] _logitsAndPresent;
    private readonly int _pastIndex;
    private readonly OrtValue[] _emptyPast;
    private readonly OrtValue[] _inputValues;
    private readonly int? _maxPositions;
    private readonly bool _int32Ids;
    private readonly int[] _lengths = new int[2];
    private long[] _ids = [];
    private long[] _positions = [];
    private long[] _ones = [];
    private int[] _ids32 = [];
    private int[] _positions32 = [];
    private int[] _ones32 = [];
    private float[] _logitsRow = [];
    private bool _disposed;

    private TextGenerator(InferenceSession session, RunOptions runOptions, List<OrtLoraAdapter> adapters, string modelPath)
    {
        _session = session;
        _runOptions = runOptions;
        _adapters = adapters;
        _modelPath = modelPath;
        _maxPositions = ModelMetadataKeys.ReadMaxPositions(session.ModelMetadata.CustomMetadataMap);
        _signature = DecoderSignature.Read(session, modelPath);
        _int32Ids = _signature.Inputs.Any(i => i.Kind != DecoderInputKind.Cache && i.ElementType == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int32);

        // Non-cache inputs first (in the session's order), then the caches, so a cache's slot is _pastIndex + its index.
        DecoderInput[] caches = [.. _signature.Caches];
        _inputNames = [.. _signature.Inputs.Where(i => i.Kind != DecoderInputKind.Cache).Select(i => i.Name), .. caches.Select(c => c.Name)];
        _pastIndex = _inputNames.Length - caches.Length;
        _inputValues = new OrtValue[_inputNames.Length];
        _logitsOnly = [_signature.Logits];
        _logitsAndPresent = [_signature.Logits, .. caches.Select(c => c.PresentName!)];

        // The cache before any token (past length 0; a fixed-size state as zeros), for prefill and every recompute step.
        _emptyPast = [.. caches.Select(c => c.CreateInitialValue())];
    }

    /// <summary>Size of the logits' last axis when the model declares it (the vocabulary), else null.</summary>
    public int? VocabSize => _session.OutputMetadata[_signature.Logits].Dimensions is [.., > 0 and var v] ? v : null;

    /// <summary>True when the model has a KV cache (past_key_values inputs with matching present outputs).</summary>
    public bool HasKvCache => _emptyPast.Length > 0;

    /// <summary>The model's vocabulary (logits' last axis, else its embedding rows); null when the graph does not tell.</summary>
    public int? VocabularySize { get; private init; }

    /// <summary>Refuses a tokenizer with more ids than the model has rows: ORT would fail mid-generation with a raw Gather index error.</summary>
    /// <exception cref="DataException">The tokenizer is larger than the model's vocabulary; the message gives both sizes.</exception>
    public void CheckTokenizer(TextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (VocabularySize is int rows && tokenizer.VocabSize > rows)
        {
            throw new DataException($"Tokenizer '{tokenizer.Source}' has {tokenizer.VocabSize:N0} tokens but model '{_modelPath}' has a vocabulary of {rows:N0}: this tokenizer does not belong to this model.");
        }
    }

    /// <summary>Longest sequence (prompt + generated) the model holds, from its <c>max_position_embeddings</c> metadata; null when unknown.</summary>
    public int? MaxPositions => _maxPositions;

    /// <summary>Opens <paramref name="modelPath"/> on the CPU with <paramref name="adapterPaths"/> active in every run.</summary>
    /// <param name="modelPath">An .onnx causal LM: input_ids [, attention_mask, position_ids, past_key_values.*] → logits [, present.*].</param>
    /// <param name="adapterPaths"><c>.onnx_adapter</c> files to activate together; the model needs their adapter slots.</param>
    /// <param name="sessionOptions">ORT session options (threads, ...); the caller keeps ownership.</param>
    /// <exception cref="LoraException">The model is missing, cannot be loaded or has inputs generation cannot feed.</exception>
    /// <exception cref="AdapterFormatException">An adapter file is malformed or ORT rejects it; the message names the file.</exception>
    /// <exception cref="AdapterMismatchException">An adapter does not fit the model's slots, or two adapters share a parameter.</exception>
    public static TextGenerator Create(string modelPath, IReadOnlyList<string>? adapterPaths = null, SessionOptions? sessionOptions = null)
    {
        ArgumentNullException.ThrowIfNull(modelPath);
        adapterPaths ??= [];
        if (!File.Exists(modelPath))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' does not exist.");
        }

        int? vocabulary;
        using (Model model = OnnxReader.Load(modelPath))
        {
            EnsureMemory(model, modelPath);
            ValidateAdapters(model, adapterPaths);
            vocabulary = ModelVocabulary.TryRead(model);
        }

        var adapters = new List<OrtLoraAdapter>();
        var runOptions = new RunOptions();
        InferenceSession? session = null;
        try
        {
            foreach (string path in adapterPaths)
            {
                adapters.Add(LoadAdapter(path));
                runOptions.AddActiveLoraAdapter(adapters[^1]);
            }

            try
            {
                // ORT warns (on stderr) about every adapter slot, an initializer that is also an input: by design here.
                using var quiet = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
                session = new InferenceSession(modelPath, sessionOptions ?? quiet);
            }
            catch (OnnxRuntimeException e)
            {
                throw new OnnxSerializationException($"Model '{modelPath}' cannot be loaded by ONNX Runtime: {e.Message}", e);
            }

            return new TextGenerator(session, runOptions, adapters, modelPath) { VocabularySize = vocabulary };
        }
        catch
        {
            session?.Dispose();
            runOptions.Dispose();
            adapters.ForEach(a => a.Dispose());
            throw;
        }
    }

    /// <summary>
    /// Continues <paramref name="prompt"/> (after BOS when the tokenizer has one) until EOS or
    /// <see cref="GenerationOptions.MaxNewTokens"/>, passing each new piece of text to <paramref name="onText"/> as soon
    /// as it decodes cleanly (SentencePiece spaces and multi-byte characters come out whole).
    /// </summary>
    /// <exception cref="LoraException">Nothing to continue (empty prompt and no BOS), or ORT fails on the model.</exception>
    public GenerationResult Generate(TextTokenizer tokenizer, string prompt, GenerationOptions options, Action<string>? onText = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(prompt);
        CheckTokenizer(tokenizer);
        var ids = new List<int>();
        if (tokenizer.BosId is int bos)
        {
            ids.Add(bos);
        }

        tokenizer.Encode(prompt, ids);
        if (ids.Count == 0)
        {
            throw new LoraException($"Nothing to continue: the prompt is empty and tokenizer '{tokenizer.Source}' has no BOS token.");
        }

        var text = new StreamingDecoder(tokenizer, ids);
        GenerationResult result = Generate([.. ids], options, tokenizer.EosId, (token, _) =>
        {
            if (token != tokenizer.EosId && text.Add(token) is { Length: > 0 } piece)
            {
                onText?.Invoke(piece);
            }
        });
        if (text.Flush() is { Length: > 0 } rest)
        {
            onText?.Invoke(rest);
        }

        return result with { Continuation = text.Continuation };
    }

    /// <summary>Continues <paramref name="promptTokens"/> until <paramref name="eosId"/> or the token limit.</summary>
    /// <param name="promptTokens">The ids to continue (BOS included if the model expects it); at least one.</param>
    /// <param name="options">Limit, sampling and cache use.</param>
    /// <param name="eosId">Token that ends generation (not included in the result), or null.</param>
    /// <param name="onStep">Called after every run with the picked token and its logits.</param>
    /// <exception cref="LoraException">ORT fails on the model (e.g. the sequence outgrows its positions).</exception>
    public GenerationResult Generate(IReadOnlyList<int> promptTokens, GenerationOptions options, int? eosId = null, GenerationStepHandler? onStep = null)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        ArgumentNullException.ThrowIfNull(options);
        ObjectDisposedException.ThrowIf(_disposed, this);
        options.Validate();
        if (promptTokens.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", nameof(promptTokens));
        }

        // A model that knows its context is checked before anything is printed, and stops cleanly when it is full
        // (the run that fills the last position still yields one token).
        int maxNewTokens = options.MaxNewTokens;
        bool contextLimited = false;
        if (_maxPositions is int context)
        {
            if (promptTokens.Count > context)
            {
                throw new LoraException($"The prompt has {promptTokens.Count} tokens; model '{_modelPath}' holds {context} positions.");
            }

            contextLimited = context - promptTokens.Count + 1 < maxNewTokens;
            maxNewTokens = Math.Min(maxNewTokens, context - promptTokens.Count + 1);
        }

        bool cached = options.UseKvCache && HasKvCache;
        var sampler = new TokenSampler(options.Sampling);
        EnsureCapacity(promptTokens.Count + maxNewTokens);
        for (int i = 0; i < promptTokens.Count; i++)
        {
            SetId(i, promptTokens[i]);
        }

        int length = promptTokens.Count;
        var generated = new List<int>(maxNewTokens);
        long prefillTicks = 0;
        long decodeTicks = 0;
        int decodeSteps = 0;
        bool endedAtEos = false;
        IDisposableReadOnlyCollection<OrtValue>? previous = null;
        try
        {
            for (int step = 0; step < maxNewTokens; step++)
            {
                long start = Stopwatch.GetTimestamp();

                // With the cache, after prefill only the newest token is fed; its past is everything before it.
                int fed = cached && step > 0 ? 1 : length;
                IDisposableReadOnlyCollection<OrtValue> outputs = Run(length - fed, fed, length, cached, cached ? previous : null);
                previous?.Dispose();
                previous = outputs;
                ReadOnlySpan<float> logits = LastLogits(outputs[0]);
                int next = sampler.Next(logits);
                long elapsed = Stopwatch.GetTimestamp() - start;
                if (step == 0)
                {
                    prefillTicks = elapsed;
                }
                else
                {
                    decodeTicks += elapsed;
                    decodeSteps++;
                }

                onStep?.Invoke(next, logits);
                if (next == eosId)
                {
                    endedAtEos = true;
                    break;
                }

                generated.Add(next);
                SetId(length++, next);
            }
        }
        finally
        {
            previous?.Dispose();
        }

        return new GenerationResult([.. promptTokens], generated, "", endedAtEos, cached,
            Stopwatch.GetElapsedTime(0, prefillTicks), decodeSteps, Stopwatch.GetElapsedTime(0, decodeTicks))
        {
            EndedAtContextLimit = contextLimited && !endedAtEos && generated.Count == maxNewTokens,
        };
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _session.Dispose();
        foreach (OrtValue v in _emptyPast)
        {
            v.Dispose();
        }

        _runOptions.Dispose();
        _adapters.ForEach(a => a.Dispose());
    }

    /// <summary>
    /// One model run on tokens [<paramref name="offset"/>, offset + <paramref name="count"/>) of <see cref="_ids"/>, with
    /// <paramref name="past"/>'s present outputs as past (or an empty past). Returns logits, then present when
    /// <paramref name="withPresent"/>.
    /// </summary>
    private IDisposableReadOnlyCollection<OrtValue> Run(int offset, int count, int total, bool withPresent, IDisposableReadOnlyCollection<OrtValue>? past)
    {
        var owned = new List<OrtValue>(4);
        try
        {
            int slot = 0;
            foreach (DecoderInput input in _signature.Inputs)
            {
                if (input.Kind != DecoderInputKind.Cache)
                {
                    OrtValue value = Feed(input, offset, count, total);
                    owned.Add(value);
                    _inputValues[slot++] = value;
                }
            }

            for (int i = 0; i < _emptyPast.Length; i++)
            {
                _inputValues[_pastIndex + i] = past is null ? _emptyPast[i] : past[1 + i];
            }

            return _session.Run(_runOptions, _inputNames, _inputValues, withPresent ? _logitsAndPresent : _logitsOnly);
        }
        catch (OnnxRuntimeException e)
        {
            string adapters = _adapters.Count == 0 ? "" : $" with {_adapters.Count} adapter(s)";
            throw new LoraException($"Model '{_modelPath}' failed at {total} tokens{adapters}: {e.Message}", e);
        }
        finally
        {
            Array.Clear(_inputValues);
            owned.ForEach(v => v.Dispose());
        }
    }

    /// <summary>The value of a non-cache input for tokens [offset, offset + count) of a sequence of <paramref name="total"/> tokens, in its declared type.</summary>
    private OrtValue Feed(DecoderInput input, int offset, int count, int total)
    {
        OrtMemoryInfo cpu = OrtMemoryInfo.DefaultInstance;
        bool int32 = input.ElementType == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int32;
        switch (input.Kind)
        {
            case DecoderInputKind.InputIds:
                return int32 ? OrtValue.CreateTensorValueFromMemory(cpu, _ids32.AsMemory(offset, count), [1, count])
                    : OrtValue.CreateTensorValueFromMemory(cpu, _ids.AsMemory(offset, count), [1, count]);
            case DecoderInputKind.AttentionMask:
                return int32 ? OrtValue.CreateTensorValueFromMemory(cpu, _ones32.AsMemory(0, total), [1, total])
                    : OrtValue.CreateTensorValueFromMemory(cpu, _ones.AsMemory(0, total), [1, total]);
            case DecoderInputKind.PositionIds:
                return int32 ? OrtValue.CreateTensorValueFromMemory(cpu, _positions32.AsMemory(offset, count), [1, count])
                    : OrtValue.CreateTensorValueFromMemory(cpu, _positions.AsMemory(offset, count), [1, count]);
            case DecoderInputKind.SeqLensK:
                _lengths[0] = total - 1;
                return OrtValue.CreateTensorValueFromMemory(cpu, _lengths.AsMemory(0, 1), [1]);
            case DecoderInputKind.TotalSequenceLength:
                _lengths[1] = total;
                return OrtValue.CreateTensorValueFromMemory(cpu, _lengths.AsMemory(1, 1), input.Rank == 0 ? [] : [1]);
            default:
                throw new InvalidOperationException($"Input '{input.Name}' is a cache; caches are fed from the previous run.");
        }
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> once from an empty cache and hands every position's logits (float32, valid only
    /// during the call) to <paramref name="onPosition"/>: what scoring a sequence (eval loss) needs.
    /// </summary>
    /// <exception cref="LoraException">ORT fails on the model.</exception>
    public void Score(IReadOnlyList<int> tokens, PositionLogitsHandler onPosition)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentNullException.ThrowIfNull(onPosition);
        ObjectDisposedException.ThrowIf(_disposed, this);
        EnsureCapacity(tokens.Count);
        for (int i = 0; i < tokens.Count; i++)
        {
            SetId(i, tokens[i]);
        }

        using IDisposableReadOnlyCollection<OrtValue> outputs = Run(0, tokens.Count, tokens.Count, withPresent: false, past: null);
        for (int p = 0; p < tokens.Count; p++)
        {
            onPosition(p, LogitsAt(outputs[0], p, tokens.Count));
        }
    }

    private ReadOnlySpan<float> LastLogits(OrtValue logits) => LogitsAt(logits, 0, 1);

    /// <summary>The logits of position <paramref name="position"/> of the last <paramref name="positions"/> as float32, whatever the model's logits type (reused buffer).</summary>
    private ReadOnlySpan<float> LogitsAt(OrtValue logits, int position, int positions)
    {
        OrtTensorTypeAndShapeInfo info = logits.GetTensorTypeAndShape();
        long[] shape = info.Shape;
        int vocab = (int)shape[^1];
        int offset = checked((int)(info.ElementCount - ((long)(positions - position) * vocab)));
        if (_logitsRow.Length != vocab)
        {
            _logitsRow = new float[vocab];
        }

        switch (_signature.LogitsType)
        {
            case Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float16:
                ReadOnlySpan<Float16> half = logits.GetTensorDataAsSpan<Float16>().Slice(offset, vocab);
                for (int i = 0; i < vocab; i++)
                {
                    _logitsRow[i] = half[i].ToFloat();
                }

                return _logitsRow;
            case Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16:
                ReadOnlySpan<BFloat16> brain = logits.GetTensorDataAsSpan<BFloat16>().Slice(offset, vocab);
                for (int i = 0; i < vocab; i++)
                {
                    _logitsRow[i] = brain[i].ToFloat();
                }

                return _logitsRow;
            default:
                return logits.GetTensorDataAsSpan<float>().Slice(offset, vocab);
        }
    }

    private void SetId(int index, int id)
    {
        _ids[index] = id;
        if (_int32Ids)
        {
            _ids32[index] = id;
        }
    }

    private void EnsureCapacity(int tokens)
    {
        if (_ids.Length >= tokens)
        {
            return;
        }

        _ids = new long[tokens];
        _ones = new long[tokens];
        Array.Fill(_ones, 1L);
        _positions = new long[tokens];
        for (int i = 0; i < tokens; i++)
        {
            _positions[i] = i;
        }

        if (_int32Ids)
        {
            _ids32 = new int[tokens];
            _ones32 = new int[tokens];
            Array.Fill(_ones32, 1);
            _positions32 = new int[tokens];
            for (int i = 0; i < tokens; i++)
            {
                _positions32[i] = i;
            }
        }
    }

    private static void ValidateAdapters(Model model, IReadOnlyList<string> adapterPaths)
    {
        if (adapterPaths.Count == 0)
        {
            return;
        }

        var files = adapterPaths.Select(p => (p, OnnxAdapterFormat.Read(p))).ToList();
        AdapterValidation.CheckNoSharedNames(files);
        foreach ((string path, AdapterFile file) in files)
        {
            AdapterValidation.ValidateAgainstModel(file, model, path);
            // ORT would run a NaN adapter and produce no text at all; merge refuses the same file.
            AdapterValueCheck.EnsureFinite(file, path);
        }
    }

    // ONNX Runtime copies every weight into its own buffers (external data included) and adds a working set for the
    // activations and the cache; refusing up front turns an out-of-memory kill into a message with the numbers.
    private static void EnsureMemory(Model model, string modelPath)
    {
        const long runtimeOverhead = 64L << 20;
        long weights = model.Graph.Initializers.Values.Sum(v => v.Initializer!.ByteLength);
        long needed = weights + (weights / 4) + runtimeOverhead;
        MemoryBudget budget = SystemResources.AvailableMemory();
        if (needed > budget.Bytes)
        {
            throw new ResourceLimitException(
                $"Generating with model '{modelPath}' needs ~{SystemResources.FormatGiB(needed)} (weights {SystemResources.FormatGiB(weights)}) but {SystemResources.FormatGiB(budget.Bytes)} is available ({budget.Source}).");
        }
    }

    private static OrtLoraAdapter LoadAdapter(string path)
    {
        try
        {
            return OrtLoraAdapter.Create(path, null);
        }
        catch (OnnxRuntimeException e)
        {
            throw new AdapterFormatException($"Adapter '{path}' was rejected by ONNX Runtime: {e.Message}", e);
        }
    }
}
