using Onnx.Lora.Bench;

// Benchmarks of Onnx.Lora that are not timed tests. Verbs:
//   graph-io [--dir out/bench] [--runs 5] [--random]   open + save a 1B-shaped torch-style Llama with external data
//   inject [--dir out/bench] [--runs 5]                 load + inject all-linear r=16 + save that 1B-shaped model
//   merge [--dir out/bench] [--rounds 30] [--runs 3] [--skip-latency] [--skip-large]
//                                                       merged / LoRA / adapter-slot vs base latency through ORT (side by side),
//                                                       and merge throughput + peak RSS on the 1B-shaped model vs a plain copy
//   kill-resume [--dir out/bench/kill-resume] [--trials 10] [--seed N] [--steps 300] [--save-steps 5] [--signal kill|int|term|mixed] [--cli onnx-lora.dll]
//                                                       SIGKILL `train` at seeded random moments, resume, compare with an uninterrupted run
//   attr-memory [--dir out/bench/attr-memory] [--mb 300]
//                                                       peak RSS (VmHWM, child per stage) of load / inject / merge of a model with one huge string attribute
//   train-memory [--dir out/bench/train-memory] [--steps 1100]
//                                                       RSS / managed heap / allocations per step of a 1,100-step stories260K run (child)
//   data-parallel [--size 3.95m|135m | --model M] [--steps 8] [--warmup 2] [--batch 4] [--seq 64] [--rounds 3]
//                                                       train tokens/s: mpirun -np 2 x 1 thread vs 1 rank x 1 and x 2 threads (same global batch)
//   generate [CHECKPOINT] [runs]                         decode tokens/s with the KV cache vs recompute (side by side), ratio
//   dump MODEL                                          print a model's inputs, initializers and nodes
//   fuzz [--target onnx|safetensors|onnx_adapter|jsonl|adapter_config|tokenizer_json|all] [--iterations N] [--seed S] [--crashes DIR] [--timeout-ms T]
//                                                       seeded mutation fuzzing of the readers; exit 1 on any crash
return args.FirstOrDefault() switch
{
    "graph-io" => GraphIoBenchmark.Run(args[1..]),
    GraphIoBenchmark.ChildVerb => GraphIoBenchmark.RunChild(args[1..]),
    "inject" => InjectBenchmark.Run(args[1..]),
    InjectBenchmark.ChildVerb => InjectBenchmark.RunChild(args[1..]),
    "merge" => MergeBenchmark.Run(args[1..]),
    MergeBenchmark.ChildVerb => MergeBenchmark.RunChild(args[1..]),
    "generate" => GenerateBenchmark.Run(args[1..]),
    "kill-resume" => KillResumeCampaign.Run(args[1..]),
    "attr-memory" => AttributeMemoryBenchmark.Run(args[1..]),
    AttributeMemoryBenchmark.ChildVerb => AttributeMemoryBenchmark.RunChild(args[1..]),
    "train-memory" => TrainMemoryBenchmark.Run(args[1..]),
    "data-parallel" => DataParallelBenchmark.Run(args[1..]),
    TrainMemoryBenchmark.ChildVerb => TrainMemoryBenchmark.RunChild(args[1..]),
    "dump" when args.Length == 2 => ModelDump.Run(args[1]),
    "fuzz" => FuzzCommand.Run(args[1..]),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: onnx-lora-bench graph-io|inject|merge|kill-resume|train-memory [--dir out/bench] [options] | generate [CHECKPOINT] [runs] | dump MODEL | fuzz [--target T] [--iterations N] [--seed S]");
    return 2;
}
