#!/usr/bin/env python3
"""Test peer for tools/gpu/run-h200.sh (never on the product path): PyTorch + PEFT on the same GPU and model shape.

  export  builds a random-weight causal LM of a named shape with transformers (from a config, no hub) and exports it
          with torch.onnx to DIR/model.onnx (+ external data), fp32 or bf16, no KV cache; writes DIR/shape.json.
  train   builds the same model on CUDA in fp32 or bf16, wraps it with PEFT LoRA (fp32 adapters), and times N AdamW
          steps on random token batches: tokens/s (median step) and torch.cuda.max_memory_allocated, as one JSON line.

Same seed, same shape, same LoRA config (r, alpha, all-linear, dropout 0) and batch as `onnx-lora gradients --steps`.
"""
import argparse
import json
import os
import statistics
import sys
import time

SHAPES = {
    # Qwen2.5-0.5B's shape (random weights): 24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936.
    "qwen0.5b": dict(family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=True),
    # Llama-3.2-1B's shape: 16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192, vocab 128256.
    "llama1b": dict(family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0,
                    rms_norm_eps=1e-5, tie_word_embeddings=True),
    # For checking this script itself on a CPU in seconds.
    "tiny": dict(family="llama", vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False),
}


def build_model(shape, dtype, device, seed):
    import torch
    import transformers
    spec = dict(SHAPES[shape])
    family = spec.pop("family")
    config_type = transformers.Qwen2Config if family == "qwen2" else transformers.LlamaConfig
    model_type = transformers.Qwen2ForCausalLM if family == "qwen2" else transformers.LlamaForCausalLM
    config = config_type(**spec, use_cache=False, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_type(config)
    return model.to(device=device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]), config


def export(args):
    import torch
    model, config = build_model(args.shape, args.dtype, "cpu", args.seed)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    ids = torch.randint(0, config.vocab_size, (1, 16))

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return self.inner(input_ids=input_ids, use_cache=False).logits

    wrapper = LogitsOnly(model)
    started = time.time()
    try:
        # The TorchScript exporter keeps the module names in the MatMul initializers (what inject matches).
        torch.onnx.export(wrapper, (ids,), path, input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
                          opset_version=17, dynamo=False)
        exporter = "torchscript"
    except Exception as e:  # noqa: BLE001 - fall back to the dynamo exporter where TorchScript export is gone
        print(f"torchscript export failed ({type(e).__name__}: {e}); trying dynamo", file=sys.stderr)
        torch.onnx.export(wrapper, (ids,), path, input_names=["input_ids"], output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}},
                          dynamo=True, external_data=True)
        exporter = "dynamo"
    import onnx
    # One external data file beside the model (fp32 0.5B is near protobuf's 2 GiB limit).
    proto = onnx.load(path, load_external_data=True)
    for f in os.listdir(args.out):
        if f != "model.onnx" and f != "shape.json":
            os.remove(os.path.join(args.out, f))
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    info = {"shape": args.shape, "dtype": args.dtype, "vocab_size": config.vocab_size, "exporter": exporter,
            "parameters": sum(p.numel() for p in model.parameters()), "export_s": round(time.time() - started, 1)}
    with open(os.path.join(args.out, "shape.json"), "w") as f:
        json.dump(info, f)
    print(json.dumps(info))


def train(args):
    import torch
    import peft
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # as ours (use_tf32=0): fp32 GEMMs in fp32
    torch.backends.cudnn.allow_tf32 = False
    model, config = build_model(args.shape, args.dtype, device, args.seed)
    lora = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules="all-linear", bias="none",
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)  # adapters stay fp32 on a bf16 base (autocast_adapter_dtype)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, config.vocab_size, (args.batch_size, args.seq_length), generator=generator).to(device) for _ in range(2)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        ids = batches[step % 2]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)  # ours clips at 1.0 too
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times) if times else float("nan")
    print(json.dumps({
        "peer": "peft", "peft": peft.__version__, "torch": torch.__version__, "device": device, "shape": args.shape,
        "dtype": args.dtype, "batch_size": args.batch_size, "seq_length": args.seq_length, "rank": args.rank,
        "trainable": sum(p.numel() for p in trainable), "steps": len(times), "step_ms_median": round(median, 3),
        "tokens_per_s": round(args.batch_size * args.seq_length / (median / 1000), 1) if times else None,
        "max_memory_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "last_loss": float(loss.detach()),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    e = sub.add_parser("export")
    e.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    e.add_argument("--seed", type=int, default=1234)
    e.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--shape", choices=sorted(SHAPES), default="qwen0.5b")
    t.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--seq-length", type=int, default=512)
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--cpu", action="store_true", help="run on the CPU (checking the script, not timing)")
    args = p.parse_args()
    export(args) if args.verb == "export" else train(args)


if __name__ == "__main__":
    main()
