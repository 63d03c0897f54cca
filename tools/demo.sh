#!/usr/bin/env bash
# The main job on the embedded default model (stories260K, a real pretrained TinyStories Llama), end to end:
# convert the llama2.c checkpoint → inspect → inject LoRA (all-linear, r=8) → train on the bundled tiny-stories data
# → merge → export PEFT + .onnx_adapter → greedy samples before/after → where everything is. Output: out/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/tools/onnx-lora"
out="${1:-$root/out/demo}"
model_dir="$root/models/default/stories260K"
data_dir="$root/models/default/data"
steps="${DEMO_STEPS:-200}"
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "== $* =="; }

step "1/7 convert the llama2.c checkpoint to ONNX"
"$cli" convert-llama2c "$model_dir/stories260K.bin" -o "$out/stories260K.onnx"

step "2/7 inspect"
"$cli" inspect "$out/stories260K.onnx" | head -n 25

step "3/7 inject LoRA (all-linear, r=8, alpha=16)"
"$cli" inject "$out/stories260K.onnx" -o "$out/stories260K.lora.onnx" --targets all-linear --rank 8 --alpha 16 --seed 1 | head -n 4

step "4/7 sample from the base model (greedy)"
"$cli" generate "$out/stories260K.onnx" --tokenizer "$model_dir/tok512.model" --prompt "One day, Mia went to the park" --max-tokens 60 | tee "$out/sample-before.txt"

step "5/7 train $steps steps on $(wc -l < "$data_dir/tiny-stories.jsonl") tiny stories (eval on $(wc -l < "$data_dir/tiny-stories-eval.jsonl") held-out ones)"
"$cli" train --model "$out/stories260K.lora.onnx" --tokenizer "$model_dir/tok512.model" \
  --data "$data_dir/tiny-stories.jsonl" --eval-data "$data_dir/tiny-stories-eval.jsonl" --output-dir "$out/run" \
  --max-steps "$steps" --batch-size 8 --seq-length 256 --packing --learning-rate 2e-3 --lr-scheduler cosine --warmup-steps 10 \
  --eval-steps 50 --save-steps 50 --save-total-limit 2 --seed 1

step "6/7 merge, export PEFT adapter and .onnx_adapter"
"$cli" merge "$out/run/lora-trained.onnx" -o "$out/merged.onnx"
"$cli" export-adapter "$out/run/lora-trained.onnx" --peft "$out/peft-adapter" -o "$out/tiny-stories.onnx_adapter"

step "7/7 sample from the merged model (greedy)"
"$cli" generate "$out/merged.onnx" --tokenizer "$model_dir/tok512.model" --prompt "One day, Mia went to the park" --max-tokens 60 | tee "$out/sample-after.txt"

end=$(date +%s)
echo
echo "== done in $((end - start)) s =="
echo "  base model        $out/stories260K.onnx"
echo "  LoRA model        $out/stories260K.lora.onnx (untrained) / $out/run/lora-trained.onnx (trained)"
echo "  run               $out/run (checkpoints/, adapter/, metrics.jsonl, loss.png, summary.json)"
echo "  merged model      $out/merged.onnx"
echo "  PEFT adapter      $out/peft-adapter"
echo "  ORT adapter       $out/tiny-stories.onnx_adapter"
echo "  samples           $out/sample-before.txt, $out/sample-after.txt"
