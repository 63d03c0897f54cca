#!/usr/bin/env bash
# A complete training run on the embedded TinyStories model, driven by a YAML config (flags override it):
#   ./tools/train-stories.sh [OUT_DIR] [extra onnx-lora train flags...]
#   ./tools/train-stories.sh --resume [extra flags...]      (OUT_DIR may be omitted: flags are never taken for it)
# Re-run with --resume to continue from the last checkpoint after an interruption (Ctrl-C saves one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${TRAIN_STORIES_OUT:-$root/out/train-stories}"   # the default folder (tests point it elsewhere)
# The first argument is the output folder only when it is not a flag (`--resume` alone used to become the folder).
if [[ $# -gt 0 && "$1" != -* ]]; then
  out="$1"
  shift
fi
mkdir -p "$out"
config="$out/train.yaml"
cat > "$config" <<YAML
model: $root/models/default/stories260K/stories260K.bin   # llama2.c checkpoint: converted, then LoRA injected
tokenizer: $root/models/default/stories260K/tok512.model
data: $root/models/default/data/tiny-stories.jsonl
eval_data: $root/models/default/data/tiny-stories-eval.jsonl
output_dir: $out/run
seq_length: 256
packing: true
batch_size: 8
gradient_accumulation_steps: 1
max_steps: 300
learning_rate: 2.0e-3
lora_plus_ratio: 4          # LoRA+: B learns 4x faster than A
lr_scheduler: cosine
warmup_ratio: 0.05
max_grad_norm: 1.0
weight_decay: 0.0
lora:
  rank: 8
  alpha: 16
  targets: [all-linear]
eval_steps: 50
early_stopping_patience: 3
save_steps: 50
save_total_limit: 3
seed: 7
YAML
echo "config: $config"
exec "$root/tools/onnx-lora" train --config "$config" "$@"
