using System.Diagnostics;
using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Models.Builders;
using static TorchSharp.torch;

namespace Onnx.Lora.TorchRef;

/// <summary>The tool's verbs. Each prints human-readable lines and, where a parent process reads it, one <c>RESULT k=v ...</c> line.</summary>
internal static class Verbs
{
    /// <summary>The real pretrained stories260K in torch-style ONNX, from ../shared/fixtures beside the repository.</summary>
    public static string DefaultModel
    {
        get
        {
            for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
            {
                if (File.Exists(Path.Combine(dir, "Onnx.Lora.sln")))
                {
                    return Path.GetFullPath(Path.Combine(dir, "..", "shared", "fixtures", "stories260K", "reference-onnx", "model_named_weights.onnx"));
                }
            }

            throw new ArgumentException("Onnx.Lora.sln not found above the tool; pass --model.");
        }
    }

    /// <summary><c>inject --model BASE --out LORA [--rank 4 --alpha 8 --seed 7]</c>: the peers' LoRA copy (PeerLora: product injector, all-linear, non-zero B).</summary>
    public static int Inject(Args a)
    {
        using Model model = OnnxReader.Load(a.Str("model", DefaultModel));
        LoraManifest manifest = PeerLora.Inject(model, a.Int("rank", 4), a.Double("alpha", 8), a.Int("seed", 7));
        OnnxWriter.Save(model, a.Str("out"));
        Console.WriteLine($"wrote {a.Str("out")}: {manifest.Modules.Count} LoRA modules, rank {a.Int("rank", 4)}");
        return 0;
    }

    /// <summary>
    /// <c>forward --model M [--batch 2 --seq 32 --seed 1 --tol 1e-4 --sdpa]</c>: logits of the libtorch peer vs ORT on
    /// the same ONNX file (base or LoRA) and the same batch; exit 1 when the max abs diff exceeds the tolerance.
    /// </summary>
    public static int Forward(Args a)
    {
        string path = a.Str("model", DefaultModel);
        int threads = a.Int("threads", 1);
        set_num_threads(threads);
        using Model model = OnnxReader.Load(path);
        LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
        TokenBatch batch = TokenBatch.Create(a.Int("seed", 1), a.Int("batch", 2), a.Int("seq", 32), facts.Vocab);
        float[] ort = OrtLogits.Run(path, batch, threads);
        using var llama = new TorchLlama(facts, a.Flag("sdpa"));
        float[] torchLogits;
        using (NewDisposeScope())
        {
            long[] shape = [batch.BatchSize, batch.SeqLen];
            torchLogits = llama.Forward(tensor(batch.Ids, shape, ScalarType.Int64), tensor(batch.Mask, shape, ScalarType.Int64)).data<float>().ToArray();
        }

        double maxAbs = 0, maxRef = 0;
        for (int i = 0; i < ort.Length; i++)
        {
            maxAbs = Math.Max(maxAbs, Math.Abs(ort[i] - torchLogits[i]));
            maxRef = Math.Max(maxRef, Math.Abs(ort[i]));
        }

        double tol = a.Double("tol", 1e-4);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"forward {Path.GetFileName(path)}: {facts.Layers} layers, {facts.Heads}/{facts.KvHeads} heads, LoRA modules {facts.Manifest?.Modules.Count ?? 0}, batch {batch.BatchSize}x{batch.SeqLen}; logits max|ort-torch| = {maxAbs:E3} (max|logit| {maxRef:F2}, tol {tol:E1})"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT max_abs_diff={maxAbs:E6}"));
        return maxAbs <= tol ? 0 : 1;
    }

    /// <summary>
    /// <c>train|train-ours --model LORA.onnx --vocab V [--steps 20 --warmup 2 --batch 4 --seq 64 --threads 2 --lr 1e-3 --sdpa --profile PREFIX --spin]</c>:
    /// AdamW LoRA training by one peer, as a bench child: it loads only what that peer needs (ours never touches
    /// libtorch, libtorch never builds ORT sessions), so its VmHWM is that peer's own footprint.
    /// </summary>
    public static int Train(Args a, bool ours)
    {
        int threads = a.Int("threads", 2);
        string path = a.Str("model");
        int batchSize = a.Int("batch", 4), seq = a.Int("seq", 64), seed = a.Int("seed", 1), vocab = a.Int("vocab", 0);
        if (vocab <= 0)
        {
            throw new ArgumentException("--vocab is required (the bench passes it so that a child does not read the model twice).");
        }

        TokenBatch[] batches = Enumerable.Range(0, 4).Select(i => TokenBatch.Create(seed + i, batchSize, seq, vocab, padRows: false)).ToArray();
        string? profile = a.Maybe("profile");
        ITrainingPeer peer;
        if (ours)
        {
            peer = OursPeer.Create(path, AdamWSettings.From(a), threads, profile, a.Flag("spin"), a.Flag("prepack"));
        }
        else
        {
            using Model model = OnnxReader.Load(path);
            if (LoraManifest.Read(model) is null)
            {
                throw new ArgumentException($"'{path}' has no LoRA manifest; inject first (the bench does).");
            }

            peer = TorchPeer(LlamaGraphFacts.Read(model), a, threads);
        }

        // Start-up as a user sees it: from the process start to the point where the first step can run.
        double readySeconds = (DateTime.Now - Process.GetCurrentProcess().StartTime).TotalSeconds;
        using (peer)
        {
            var losses = new List<float>();
            TrainTiming timing = TrainTiming.Measure(a.Int("warmup", 2), a.Int("steps", 20), batchSize * seq, i =>
            {
                losses.Add(peer.Step(batches[i % batches.Length]));
                if (i == 0)
                {
                    Console.WriteLine($"after step 1: {ProcessStats.Snapshot()}");
                }
            });
            if (a.Flag("verbose"))
            {
                for (int i = 0; i < losses.Count; i++)
                {
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {i + 1}: loss {losses[i]:F6}"));
                }
            }

            if (profile is not null && OursPeer.EndProfiling(peer) is { } profileFile)
            {
                Console.Write(OrtProfileSummary.Format(OrtProfileSummary.Read(profileFile), 25));
            }

            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"RESULT peer={peer.Name} tokens_per_s={timing.TokensPerSecond:F1} step_ms={timing.Elapsed.TotalMilliseconds / timing.Steps:F3} peak_rss_mib={ProcessStats.PeakRssMiB():F1} ready_s={readySeconds:F2} final_loss={losses[^1]:F6}"));
        }

        return 0;
    }

    /// <summary>
    /// <c>parity [--model M] [--steps 20 --batch 4 --seq 64 --rank 4 --alpha 8 --lr 1e-3 --weight-decay 0.01 --tol 1e-4]</c>:
    /// loss and every A/B gradient of our trainer vs libtorch on one batch, then both train N AdamW steps on the same
    /// batches; exit 1 when any relative error exceeds the tolerance.
    /// </summary>
    public static int Parity(Args a)
    {
        set_num_threads(1);
        using var temp = new TempFolder();
        (Model model, string path) = LoraModel(a, temp);
        using (model)
        {
            LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
            int batchSize = a.Int("batch", 4), seq = a.Int("seq", 64), seed = a.Int("seed", 1);
            TokenBatch[] batches = Enumerable.Range(0, 4).Select(i => TokenBatch.Create(seed + i, batchSize, seq, facts.Vocab)).ToArray();
            AdamWSettings adamw = AdamWSettings.From(a);
            using ITrainingPeer torchPeer = TorchPeer(facts, a, 1);
            using ITrainingPeer ours = OursPeer.Create(path, adamw, 1);
            ParityResult r = ParityResult.Run(torchPeer, ours, batches, a.Int("steps", 20));
            double tol = a.Double("tol", 1e-4);
            var inv = CultureInfo.InvariantCulture;
            Console.WriteLine(string.Create(inv, $"parity on {Path.GetFileName(a.Str("model", DefaultModel))}: {facts.Manifest!.Modules.Count} LoRA modules, batch {batchSize}x{seq}, {adamw}"));
            Console.WriteLine(string.Create(inv, $"loss: libtorch {r.ReferenceLoss:F7}  ours {r.CandidateLoss:F7}  rel {r.LossRel:E2}"));
            foreach (TensorDiff g in r.Gradients.OrderByDescending(g => g.RelInf).Take(a.Int("show", 5)))
            {
                Console.WriteLine(string.Create(inv, $"  grad {g.Name}: max|d| {g.MaxAbsDiff:E2} / max|g| {g.MaxAbsRef:E2} = {g.RelInf:E2} (L2 rel {g.RelL2:E2})"));
            }

            Console.WriteLine(string.Create(inv, $"gradients: {r.Gradients.Count} tensors, worst ||d||inf/||g||inf = {r.WorstGradientRel:E2}"));
            Console.WriteLine(string.Create(inv, $"trajectory ({r.ReferenceTrajectory.Length} AdamW steps): worst rel {r.WorstTrajectoryRel:E2}; last loss libtorch {r.ReferenceTrajectory[^1]:F6} ours {r.CandidateTrajectory[^1]:F6}"));
            bool ok = r.LossRel <= tol && r.WorstGradientRel <= tol && r.WorstTrajectoryRel <= tol;
            Console.WriteLine(string.Create(inv, $"RESULT loss_rel={r.LossRel:E3} grad_rel={r.WorstGradientRel:E3} traj_rel={r.WorstTrajectoryRel:E3} pass={ok}"));
            return ok ? 0 : 1;
        }
    }

    private static TorchTrainer TorchPeer(LlamaGraphFacts facts, Args a, int threads)
    {
        set_num_threads(threads);
        return new TorchTrainer(new TorchLlama(facts, a.Flag("sdpa")), AdamWSettings.From(a), ownsModel: true);
    }

    /// <summary>The LoRA model both peers train: --model as is when it has a manifest, else PeerLora.Inject (the product injector, non-zero B) saved to a temp file.</summary>
    private static (Model Model, string Path) LoraModel(Args a, TempFolder temp)
    {
        string path = a.Str("model", DefaultModel);
        Model model = OnnxReader.Load(path);
        if (LoraManifest.Read(model) is null)
        {
            PeerLora.Inject(model, a.Int("rank", 8), a.Double("alpha", 16), a.Int("lora-seed", 7));
            path = Path.Combine(temp.Path, "lora.onnx");
            OnnxWriter.Save(model, path);
        }

        return (model, path);
    }

    /// <summary>
    /// <c>make-model --out M.onnx [--hidden 256 --layers 4 --heads 8 --kv-heads 4 --intermediate 688 --vocab 4096 --max-pos 256 --external-data]</c>:
    /// a larger torch-style Llama (models/ TorchLlamaBuilder, interleaved RoPE, named weights, seeded random weights) so the
    /// bench can also be run where GEMMs, not per-op overhead, dominate. With <c>--external-data</c>, and always at 2 GiB
    /// of weights or more (protobuf's limit), the weights go to <c>M.onnx.data</c> beside the model.
    /// </summary>
    public static int MakeModel(Args a)
    {
        var config = new LlamaConfig
        {
            Hidden = a.Int("hidden", 256),
            Layers = a.Int("layers", 4),
            Heads = a.Int("heads", 8),
            KvHeads = a.Int("kv-heads", 4),
            Intermediate = a.Int("intermediate", 688),
            Vocab = a.Int("vocab", 4096),
            MaxPositions = a.Int("max-pos", 256),
            Rope = RopeStyle.Interleaved,
            Naming = InitializerNaming.Named,
        };
        using Model model = TorchLlamaBuilder.Build(config);
        bool external = a.Flag("external-data") || config.ParameterCount * sizeof(float) >= (2L << 30) - (64L << 20);
        OnnxWriter.Save(model, a.Str("out"), external
            ? new SaveOptions { ExternalData = ExternalDataMode.SingleFile, DataFileName = Path.GetFileName(a.Str("out")) + ".data" }
            : null);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {a.Str("out")}: {config.ParameterCount / 1e6:F2} M parameters"));
        return 0;
    }

    /// <summary><c>sgemm [--n 1024 --threads 2 --runs 10]</c>: MLAS sgemm peak through ORT (one MatMul), GFLOP/s.</summary>
    public static int Sgemm(Args a)
    {
        double gflops = SgemmProbe.Measure(a.Int("n", 1024), a.Int("threads", 2), a.Int("runs", 10));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT sgemm_gflops={gflops:F2}"));
        return 0;
    }

    /// <summary>
    /// <c>bench [--model M --steps 30 --batch 4 --seq 64 --threads 2 --rank 8 --runs 3 --sdpa --spin]</c>: runs each peer in its own
    /// child process (so VmHWM is its own), plus the sgemm probe, and prints tokens/s, peak RSS, their ratios and the
    /// training FLOP/s as a fraction of the sgemm peak.
    /// </summary>
    /// <remarks><c>--spin</c> lets our ORT thread pool busy-wait (TrainingSessionOptions.AllowSpinning); off by default.</remarks>
    public static int Bench(Args a)
    {
        int threads = a.Int("threads", 2), runs = a.Int("runs", 3), seq = a.Int("seq", 64);
        using var temp = new TempFolder();
        (Model model, string path) = LoraModel(a, temp);
        double flopsPerToken;
        int vocab;
        using (model)
        {
            LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
            flopsPerToken = TrainingFlops.PerToken(facts, seq);
            vocab = facts.Vocab;
        }

        string common = string.Create(CultureInfo.InvariantCulture,
            $"--model {path} --vocab {vocab} --steps {a.Int("steps", 30)} --warmup {a.Int("warmup", 3)} --batch {a.Int("batch", 4)} --seq {seq} --threads {threads} --lr {a.Double("lr", 1e-3)}");
        var peers = new List<(string Name, string Verb)> { ("libtorch", "train" + (a.Flag("sdpa") ? " --sdpa" : string.Empty)), ("ours", "train-ours" + (a.Flag("spin") ? " --spin" : string.Empty)) };

        // libtorch's OpenMP spins actively between ops by default; on a shared 2-core box with other load that turns a
        // 50 ms step into seconds. PASSIVE gives libtorch its best case here (--omp-wait ACTIVE to see the default).
        string ompWait = a.Str("omp-wait", "PASSIVE");
        var results = peers.ToDictionary(p => p.Name, _ => new List<Dictionary<string, string>>());
        var sgemm = new List<double>();
        for (int r = 0; r < runs; r++)
        {
            foreach ((string name, string verb) in peers)
            {
                results[name].Add(RunChild($"{verb} {common}", name == "libtorch" ? ompWait : null));
            }

            sgemm.Add(double.Parse(RunChild($"sgemm --threads {threads} --n {a.Int("n", 1024)}")["sgemm_gflops"], CultureInfo.InvariantCulture));
        }

        var inv = CultureInfo.InvariantCulture;
        double peak = Median(sgemm);
        Console.WriteLine(string.Create(inv, $"model {Path.GetFileName(a.Str("model", DefaultModel))} + LoRA all-linear r={a.Int("rank", 8)} alpha={a.Int("alpha", 16)}; {common[common.IndexOf("--steps", StringComparison.Ordinal)..]}{(a.Flag("sdpa") ? " --sdpa" : string.Empty)}; libtorch OMP_WAIT_POLICY={ompWait}; medians of {runs} runs"));
        Console.WriteLine(string.Create(inv, $"sgemm peak (ORT MatMul {a.Int("n", 1024)}^3, {threads} threads): {peak:F1} GFLOP/s  (runs: {string.Join(", ", sgemm.Select(s => s.ToString("F1", inv)))})"));
        Console.WriteLine(string.Create(inv, $"training FLOPs per token (see TrainingFlops): {flopsPerToken / 1e6:F3} MFLOP"));
        var summary = new Dictionary<string, (double Tps, double Rss)>();
        foreach ((string name, _) in peers)
        {
            double tps = Median(results[name].Select(d => double.Parse(d["tokens_per_s"], inv)));
            double rss = Median(results[name].Select(d => double.Parse(d["peak_rss_mib"], inv)));
            summary[name] = (tps, rss);
            Console.WriteLine(string.Create(inv,
                $"{name,-9} tokens/s {tps,10:F1}  peak RSS {rss,7:F1} MiB  training {tps * flopsPerToken / 1e9,7:F3} GFLOP/s = {100 * tps * flopsPerToken / 1e9 / peak,5:F2}% of sgemm peak  (tokens/s runs: {string.Join(", ", results[name].Select(d => d["tokens_per_s"]))}; RSS runs: {string.Join(", ", results[name].Select(d => d["peak_rss_mib"]))})"));
        }

        if (summary.TryGetValue("ours", out var ours))
        {
            var lt = summary["libtorch"];
            // Each run's two children ran back to back under the same background load: the median of per-run
            // ratios is steadier than the ratio of medians on a shared machine.
            double pairRatio = Median(results["ours"].Zip(results["libtorch"], (o, l) => double.Parse(o["tokens_per_s"], inv) / double.Parse(l["tokens_per_s"], inv)));
            Console.WriteLine(string.Create(inv,
                $"ours/libtorch: tokens/s {ours.Tps / lt.Tps:F2}x (median of per-run ratios {pairRatio:F2}x; goal >= 1.5x), peak RSS {ours.Rss / lt.Rss:F2}x (goal <= 0.7x)"));
        }
        else
        {
            Console.WriteLine("ours: our trainer is not in this build (LoraTrainingSession missing); only the libtorch side ran.");
        }

        return 0;
    }

    /// <summary>Runs this tool as a child with <paramref name="arguments"/> and returns its <c>RESULT k=v</c> pairs (none when <paramref name="resultLine"/> is false).</summary>
    internal static Dictionary<string, string> RunChild(string arguments, string? ompWaitPolicy = null, bool resultLine = true)
    {
        string exe = Path.Combine(AppContext.BaseDirectory, "onnx-lora-torchref");
        var psi = new ProcessStartInfo(exe, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (ompWaitPolicy is not null)
        {
            psi.Environment["OMP_WAIT_POLICY"] = ompWaitPolicy;
        }

        using var p = Process.Start(psi) ?? throw new IOException($"could not start {exe}");
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        string? result = output.Split('\n').LastOrDefault(l => l.StartsWith("RESULT ", StringComparison.Ordinal));
        if (p.ExitCode != 0 || (result is null && resultLine))
        {
            throw new IOException($"child '{arguments}' failed (exit {p.ExitCode}): {output} {err.Result}");
        }

        if (result is null)
        {
            return [];
        }

        return result["RESULT ".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(kv => kv.Split('=', 2)).ToDictionary(kv => kv[0], kv => kv[1], StringComparer.Ordinal);
    }

    internal static double Median(IEnumerable<double> values)
    {
        double[] v = values.Order().ToArray();
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[(v.Length / 2) - 1] + v[v.Length / 2]) / 2;
    }
}
