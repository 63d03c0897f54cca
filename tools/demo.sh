#!/usr/bin/env bash
# The main job on the embedded default model (stories260K, a real pretrained TinyStories Llama), end to end:
# convert the llama2.c checkpoint → inspect → inject LoRA (all-linear, r=8) → train on the bundled Zuzu stories (eval
# loss before → after) → merge → export a PEFT adapter and an .onnx_adapter → generate from the same prompts with the
# base model, with the adapter (ORT's adapter API) and with the merged model. Exits 0 only if every check held:
# eval loss went down, adapter and merged texts are identical (greedy), base texts differ. Output: out/demo.
#   ./tools/demo.sh [OUT_DIR]        DEMO_STEPS=N changes the number of training steps (default 500).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/tools/onnx-lora"
out="${1:-$root/out/demo}"
model_dir="$root/models/default/stories260K"
data_dir="$root/models/default/data"
tokenizer="$model_dir/tok512.model"
steps="${DEMO_STEPS:-500}"
prompts=("One day, Mia went to the park" "Once upon a time, there was a little boy named Tom" "Lily had a red ball")
prompt_args=()
for p in "${prompts[@]}"; do prompt_args+=(--prompt "$p"); done

rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "== $* =="; }

# The CLI is built once (Release) by tools/onnx-lora on first use; say so, since that is the slow part on a fresh machine.
if [ ! -f "$root/tools/Onnx.Lora.Cli/bin/Release/net10.0/onnx-lora.dll" ]; then
  step "0/8 build the onnx-lora CLI (first run only)"
fi
"$cli" --version > /dev/null

step "1/8 convert the llama2.c checkpoint to ONNX (with KV cache)"
"$cli" convert-llama2c "$model_dir/stories260K.bin" -o "$out/stories260K.onnx"

step "2/8 inspect"
"$cli" inspect "$out/stories260K.onnx" | head -n 12
echo "  ..."

step "3/8 inject LoRA (all-linear, r=8, alpha=16)"
"$cli" inject "$out/stories260K.onnx" -o "$out/stories260K.lora.onnx" --targets all-linear --rank 8 --alpha 16 --seed 1 | head -n 4

step "4/8 train $steps steps on $(wc -l < "$data_dir/tiny-stories.jsonl") stories about Zuzu the robot (eval on $(wc -l < "$data_dir/tiny-stories-eval.jsonl") held-out ones)"
"$cli" train --model "$out/stories260K.lora.onnx" --tokenizer "$tokenizer" \
  --data "$data_dir/tiny-stories.jsonl" --eval-data "$data_dir/tiny-stories-eval.jsonl" --output-dir "$out/run" \
  --max-steps "$steps" --batch-size 8 --seq-length 256 --packing --learning-rate 2e-3 --lr-scheduler cosine --warmup-steps 20 \
  --eval-steps 25 --save-steps 100 --save-total-limit 2 --seed 1

step "5/8 merge W' = W + scale·B·A into the base weights"
"$cli" merge "$out/run/lora-trained.onnx" -o "$out/merged.onnx"

step "6/8 export the adapter: PEFT (safetensors + adapter_config.json) and .onnx_adapter with a base-with-slots model"
"$cli" export-adapter "$out/run/lora-trained.onnx" --peft "$out/peft-adapter"
"$cli" export-adapter "$out/stories260K.onnx" --serving "$out/serving" --adapter "zuzu=$out/peft-adapter"

step "7/8 generate (greedy, KV cache) from the same prompts: base, adapter (ORT adapter API), merged"
"$cli" generate "$out/stories260K.onnx" --tokenizer "$tokenizer" "${prompt_args[@]}" --max-tokens 80 > "$out/generate-base.txt"
"$cli" generate "$out/serving/base-with-slots.onnx" --adapter "$out/serving/zuzu.onnx_adapter" --tokenizer "$tokenizer" "${prompt_args[@]}" --max-tokens 80 > "$out/generate-adapter.txt"
"$cli" generate "$out/merged.onnx" --tokenizer "$tokenizer" "${prompt_args[@]}" --max-tokens 80 > "$out/generate-merged.txt"
for i in "${!prompts[@]}"; do
  n=$((i + 1))
  echo
  echo "  prompt $n: ${prompts[$i]}"
  echo "  base   : $(sed -n "${n}p" "$out/generate-base.txt")"
  echo "  adapter: $(sed -n "${n}p" "$out/generate-adapter.txt")"
  echo "  merged : $(sed -n "${n}p" "$out/generate-merged.txt")"
done

step "8/8 checks"
failures=0
check() { # check DESCRIPTION COMMAND...
  local what="$1"; shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; failures=$((failures + 1)); fi
}
summary="$out/run/summary.json"
eval_before=$(sed -n 's/.*"first_eval_loss": *\([-0-9.eE+]*\).*/\1/p' "$summary")
eval_after=$(sed -n 's/.*"last_eval_loss": *\([-0-9.eE+]*\).*/\1/p' "$summary")
echo "  eval loss before → after: $eval_before → $eval_after"
check "eval loss went down" awk -v a="$eval_before" -v b="$eval_after" 'BEGIN { exit !(a != "" && b != "" && b + 0 < a + 0) }'
check "adapter and merged generations are identical" cmp -s "$out/generate-adapter.txt" "$out/generate-merged.txt"
lines_differ() { # every line of $1 differs from the same line of $2
  local n
  for n in $(seq 1 "${#prompts[@]}"); do
    [ "$(sed -n "${n}p" "$1")" != "$(sed -n "${n}p" "$2")" ] || return 1
  done
}
check "base generations differ from the adapter's for every prompt" lines_differ "$out/generate-base.txt" "$out/generate-adapter.txt"
check "one generation per prompt from each model" test "$(wc -l < "$out/generate-base.txt")" -eq "${#prompts[@]}" -a "$(wc -l < "$out/generate-adapter.txt")" -eq "${#prompts[@]}"
zuzu_base=$(grep -c Zuzu "$out/generate-base.txt" || true)
zuzu_adapter=$(grep -c Zuzu "$out/generate-adapter.txt" || true)
echo "  generations that meet Zuzu: base $zuzu_base/${#prompts[@]}, adapter $zuzu_adapter/${#prompts[@]}"

end=$(date +%s)
echo
echo "== done in $((end - start)) s =="
echo "  base model        $out/stories260K.onnx"
echo "  LoRA model        $out/stories260K.lora.onnx (untrained) / $out/run/lora-trained.onnx (trained)"
echo "  run               $out/run (checkpoints/, adapter/, metrics.jsonl, summary.json)"
echo "  loss curve        $out/run/loss.png"
echo "  merged model      $out/merged.onnx"
echo "  PEFT adapter      $out/peft-adapter"
echo "  ORT adapter       $out/serving/zuzu.onnx_adapter (for $out/serving/base-with-slots.onnx)"
echo "  generations       $out/generate-{base,adapter,merged}.txt"
if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all checks held"
