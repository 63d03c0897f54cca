using System.Globalization;
using Onnx.Lora.Ir;
using Onnx.Lora.Ir.Serialization;
using Onnx.Lora.Trainer.Config;
using Onnx.Lora.Trainer.Runner;
using Onnx.Lora.Tools;

namespace Onnx.Lora.TorchRef;

/// <summary>A real model's shape, random weights: what <c>make-model</c> builds for the <c>scale</c> bench.</summary>
/// <param name="Name">Short name for the table.</param>
/// <param name="MakeArgs">make-model options.</param>
/// <param name="Seq">Sequence length of the row.</param>
/// <param name="Batch">Batch size of the row.</param>
internal sealed record ScaleShape(string Name, string MakeArgs, int Seq, int Batch)
{
    public static readonly ScaleShape[] All =
    [
        new("smollm-135m", "--hidden 576 --layers 30 --heads 9 --kv-heads 3 --intermediate 1536 --vocab 49152 --max-pos 2048", 256, 2),
        new("qwen-0.5b", "--hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936 --max-pos 2048 --external-data", 256, 1),
    ];
}

/// <summary>
/// <c>scale [--shapes smollm-135m,qwen-0.5b --dir /tmp/onnx-lora-scale --steps 2 --warmup 1 --runs 1 --threads 1 --rank 16 --alpha 32 --rows 256x2 --recompute]</c>:
/// the issue-13 table. Makes each shape once (random weights, external data at 2 GiB and up), injects all-linear LoRA
/// with the peers' injector, then runs libtorch and ours in their own child processes, back to back, and prints tokens/s,
/// peak RSS (VmHWM), our memory estimate against our peak, start-up (process start → ready for the first step) and the
/// share of the sgemm peak each reaches.
/// </summary>
internal static class ScaleBench
{
    public static int Run(ToolArgs a)
    {
        var inv = CultureInfo.InvariantCulture;
        string dir = a.Str("dir", Path.Combine(Path.GetTempPath(), "onnx-lora-scale"));
        Directory.CreateDirectory(dir);
        int threads = a.Int("threads", 1), runs = a.Int("runs", 1), rank = a.Int("rank", 16);
        string[] wanted = a.Str("shapes", "smollm-135m,qwen-0.5b").Split(',', StringSplitOptions.RemoveEmptyEntries);
        double sgemm = double.Parse(Verbs.RunChild($"sgemm --threads {threads} --n 1024")["sgemm_gflops"], inv);
        Console.WriteLine(string.Create(inv, $"sgemm peak (ORT MatMul 1024^3, {threads} threads): {sgemm:F1} GFLOP/s; LoRA all-linear r={rank}; {runs} run(s) of {a.Int("warmup", 1)} warm-up + {a.Int("steps", 2)} timed steps per peer"));
        Console.WriteLine("| shape | seq×batch | tok/s ours / libtorch | peak RSS ours / libtorch | RSS ratio | estimate / our peak | start-up ours / libtorch | % of sgemm ours / libtorch |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (ScaleShape shape in ScaleShape.All.Where(s => wanted.Contains(s.Name)))
        {
            (int seq, int batch) = a.Maybe("rows") is { } rows && rows.Split('x') is [var s, var b]
                ? (int.Parse(s, inv), int.Parse(b, inv)) : (shape.Seq, shape.Batch);
            string basePath = Path.Combine(dir, shape.Name + ".onnx"), loraPath = Path.Combine(dir, shape.Name + "-lora.onnx");
            if (!File.Exists(loraPath))
            {
                Verbs.RunChild($"make-model --out {basePath} {shape.MakeArgs}", resultLine: false);
                Verbs.RunChild($"inject --model {basePath} --out {loraPath} --rank {rank} --alpha {a.Int("alpha", 32)}", resultLine: false);
            }

            double flopsPerToken;
            int vocab;
            using (Model model = OnnxReader.Load(loraPath))
            {
                LlamaGraphFacts facts = LlamaGraphFacts.Read(model);
                flopsPerToken = TrainingFlops.PerToken(facts, seq);
                vocab = facts.Vocab;
            }

            // What train --memory-limit checks: the training graph's own memory walk (built in memory, nothing written).
            bool recompute = a.Flag("recompute");
            GraphMemoryProfile profile = TrainingGraphMemory.ForModel(loraPath, batch, seq, recompute);
            TrainingMemoryEstimate walked = TrainingMemoryEstimate.FromGraph(profile, 0);
            TrainingMemoryEstimate estimate;
            using (Model baseModel = OnnxReader.Load(basePath))
            {
                estimate = TrainingMemoryEstimate.Estimate(new TrainOptions { BatchSize = batch, SeqLength = seq, Lora = new LoraConfig { Rank = rank }, GradientCheckpointing = recompute }, TrainingMemoryEstimate.ShapeOf(baseModel), 0);
            }

            // As train checks it: the larger of the per-token estimate and the walk.
            if (walked.Total > estimate.Total)
            {
                estimate = walked;
            }

            string common = string.Create(inv, $"--model {loraPath} --vocab {vocab} --steps {a.Int("steps", 2)} --warmup {a.Int("warmup", 1)} --batch {batch} --seq {seq} --threads {threads}");
            var ours = new List<Dictionary<string, string>>();
            var torch = new List<Dictionary<string, string>>();
            for (int r = 0; r < runs; r++)
            {
                // The sgemm peak is probed again beside each peer: on a shared box the load changes within a run, and a
                // share of the peak is only meaningful against a probe taken under the same load (the highest one counts).
                sgemm = Math.Max(sgemm, Probe(threads));
                torch.Add(Verbs.RunChild($"train {common}", ompWaitPolicy: "PASSIVE"));
                sgemm = Math.Max(sgemm, Probe(threads));
                ours.Add(Verbs.RunChild($"train-ours {common}{(recompute ? " --recompute" : string.Empty)}"));
            }

            sgemm = Math.Max(sgemm, Probe(threads));

            double M(List<Dictionary<string, string>> l, string k) => Verbs.Median(l.Select(d => double.Parse(d[k], inv)));
            double oursRss = M(ours, "peak_rss_mib"), torchRss = M(torch, "peak_rss_mib");
            double tpsRatio = Verbs.Median(ours.Zip(torch, (o, t) => double.Parse(o["tokens_per_s"], inv) / double.Parse(t["tokens_per_s"], inv)));
            double Pct(List<Dictionary<string, string>> l) => 100 * M(l, "tokens_per_s") * flopsPerToken / 1e9 / sgemm;
            Console.WriteLine(string.Create(inv,
                $"| {shape.Name} | {seq}×{batch} | {M(ours, "tokens_per_s"):F1} / {M(torch, "tokens_per_s"):F1} = {tpsRatio:F2}× | {oursRss / 1024:F2} / {torchRss / 1024:F2} GiB | {oursRss / torchRss:F2} | {estimate.Total / 1048576.0 / 1024:F2} GiB / {oursRss / 1024:F2} = {estimate.Total / 1048576.0 / oursRss:F2} | {M(ours, "ready_s"):F1} / {M(torch, "ready_s"):F1} s | {Pct(ours):F0}% / {Pct(torch):F0}% |"));
            Console.WriteLine(string.Create(inv, $"  estimate (the larger of per-token and walk, as train checks): {estimate}; graph walk {walked.Total / 1048576.0 / 1024:F2} GiB = {walked.Total / 1048576.0 / oursRss:F2} of our peak (live peak {profile.PeakActivationBytes / 1048576.0:F0} MiB, arena {profile.ArenaBytes / 1048576.0:F0} MiB); walk peak at {profile.PeakNode}; sgemm peak {sgemm:F1} GFLOP/s (highest probe of the row){(recompute ? "; ours with --recompute" : string.Empty)}"));
        }

        return 0;
    }

    private static double Probe(int threads) =>
        double.Parse(Verbs.RunChild($"sgemm --threads {threads} --n 1024")["sgemm_gflops"], CultureInfo.InvariantCulture);
}
