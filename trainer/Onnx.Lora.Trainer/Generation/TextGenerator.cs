using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Onnx.Lora.Exporter;
using Onnx.Lora.Exporter.Formats;
using Onnx.Lora.Graph;
using Onnx.Lora.Graph.Resources;
using Onnx.Lora.Graph.Serialization;
using Onnx.Lora.Models;
using Onnx.Lora.Trainer.Data;

namespace Onnx.Lora.Trainer.Generation;

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
    private const string PastPrefix = "past_key_values.";
    private const string PresentPrefix = "present.";

    private readonly InferenceSession _session;
    private readonly RunOptions _runOptions;
    private readonly List<OrtLoraAdapter> _adapters;
    private readonly string _modelPath;
    private readonly string[] _inputNames;
    private readonly string[] _logitsOnly;
    private readonly string[] _logitsAndPresent;
    private readonly int _maskIndex;
    private readonly int _positionsIndex;
    private readonly int _pastIndex;
    private readonly OrtValue[] _emptyPast;
    private readonly OrtValue[] _inputValues;
    private readonly int? _maxPositions;
    private long[] _ids = [];
    private long[] _positions = [];
    private long[] _ones = [];
    private bool _disposed;

    private TextGenerator(InferenceSession session, RunOptions runOptions, List<OrtLoraAdapter> adapters, string modelPath)
    {
        _session = session;
        _runOptions = runOptions;
        _adapters = adapters;
        _modelPath = modelPath;
        _maxPositions = ModelMetadataKeys.ReadMaxPositions(session.ModelMetadata.CustomMetadataMap);
        var past = new List<(string Name, long KvHeads, long HeadDim)>();
        foreach ((string name, NodeMetadata meta) in session.InputMetadata)
        {
            if (name.StartsWith(PastPrefix, StringComparison.Ordinal))
            {
                past.Add(PastInput(name, meta));
            }
            else if (name is not ("input_ids" or "attention_mask" or "position_ids"))
            {
                throw new OnnxSerializationException($"Model '{modelPath}' has input '{name}', which generation cannot feed (it feeds input_ids, attention_mask, position_ids and past_key_values.N.key/value).");
            }
            else if (meta.ElementType != typeof(long))
            {
                throw new OnnxSerializationException($"Model '{modelPath}' input '{name}' is {meta.ElementType.Name}; generation feeds int64.");
            }
        }

        if (!session.InputMetadata.ContainsKey("input_ids"))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' has no input 'input_ids'.");
        }

        string logits = session.OutputMetadata.ContainsKey("logits") ? "logits" : session.OutputMetadata.Keys.First();
        if (session.OutputMetadata[logits].ElementType != typeof(float))
        {
            throw new OnnxSerializationException($"Model '{modelPath}' output '{logits}' is {session.OutputMetadata[logits].ElementType.Name}; generation reads float32 logits.");
        }

        var names = new List<string> { "input_ids" };
        _maskIndex = AddIfDeclared(names, "attention_mask");
        _positionsIndex = AddIfDeclared(names, "position_ids");
        _pastIndex = names.Count;
        names.AddRange(past.Select(p => p.Name));
        _inputNames = [.. names];
        _inputValues = new OrtValue[_inputNames.Length];
        _logitsOnly = [logits];
        _logitsAndPresent = [logits, .. past.Select(p => PresentPrefix + p.Name[PastPrefix.Length..])];
        string? missing = _logitsAndPresent.FirstOrDefault(n => !session.OutputMetadata.ContainsKey(n));
        if (missing is not null)
        {
            throw new OnnxSerializationException($"Model '{modelPath}' has KV cache inputs but no output '{missing}' to feed back as past.");
        }

        // An empty past (past_sequence_length 0) for prefill and for every recompute step.
        _emptyPast = [.. past.Select(p => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), [1, p.KvHeads, 0, p.HeadDim]))];

        int AddIfDeclared(List<string> list, string name)
        {
            if (!session.InputMetadata.ContainsKey(name))
            {
                return -1;
            }

            list.Add(name);
            return list.Count - 1;
        }
    }

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
            vocabulary = Runner.ModelPreparation.TryVocabSize(model);
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
            _ids[i] = promptTokens[i];
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
                ReadOnlySpan<float> all = outputs[0].GetTensorDataAsSpan<float>();
                ReadOnlySpan<float> logits = all[(all.Length / fed * (fed - 1))..];
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
                _ids[length++] = next;
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
        OrtMemoryInfo cpu = OrtMemoryInfo.DefaultInstance;
        using OrtValue ids = OrtValue.CreateTensorValueFromMemory(cpu, _ids.AsMemory(offset, count), [1, count]);
        using OrtValue? mask = _maskIndex < 0 ? null : OrtValue.CreateTensorValueFromMemory(cpu, _ones.AsMemory(0, total), [1, total]);
        using OrtValue? positions = _positionsIndex < 0 ? null : OrtValue.CreateTensorValueFromMemory(cpu, _positions.AsMemory(offset, count), [1, count]);
        _inputValues[0] = ids;
        if (mask is not null)
        {
            _inputValues[_maskIndex] = mask;
        }

        if (positions is not null)
        {
            _inputValues[_positionsIndex] = positions;
        }

        for (int i = 0; i < _emptyPast.Length; i++)
        {
            _inputValues[_pastIndex + i] = past is null ? _emptyPast[i] : past[1 + i];
        }

        try
        {
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
    }

    private (string Name, long KvHeads, long HeadDim) PastInput(string name, NodeMetadata meta)
    {
        int[] dims = meta.Dimensions;
        if (meta.ElementType != typeof(float) || dims.Length != 4 || dims[1] <= 0 || dims[3] <= 0)
        {
            throw new LoraException($"Model '{_modelPath}' cache input '{name}' is {meta.ElementType.Name} [{string.Join(",", dims)}]; generation feeds float32 [batch, kv_heads, past, head_dim] with fixed kv_heads and head_dim.");
        }

        return (name, dims[1], dims[3]);
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

    /// <summary>
    /// Turns a growing id list into text pieces: decodes the whole list and hands out what is new, holding back while the
    /// text ends in an incomplete byte sequence (U+FFFD) — decoding tokens one by one would drop SentencePiece's leading
    /// spaces and split multi-byte characters.
    /// </summary>
    private sealed class StreamingDecoder(TextTokenizer tokenizer, List<int> ids)
    {
        private readonly string _prompt = tokenizer.Decode(ids);
        private string _shown = tokenizer.Decode(ids);

        public string Continuation => _shown.StartsWith(_prompt, StringComparison.Ordinal) ? _shown[_prompt.Length..] : _shown;

        public string Add(int token)
        {
            ids.Add(token);
            string text = tokenizer.Decode(ids);
            return text.EndsWith('\uFFFD') ? "" : Advance(text);
        }

        public string Flush() => Advance(tokenizer.Decode(ids));

        private string Advance(string text)
        {
            if (!text.StartsWith(_shown, StringComparison.Ordinal))
            {
                // Decoding revised earlier text (rare, e.g. a byte sequence resolved differently): nothing safe to add.
                return "";
            }

            string piece = text[_shown.Length..];
            _shown = text;
            return piece;
        }
    }
}
