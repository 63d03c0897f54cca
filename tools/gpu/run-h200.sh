#!/usr/bin/env bash
# One command on the GPU machine (fits its 10-minute limit): joins the bundle parts of tools/gpu/prepare.sh, points the
# loader at the CUDA 13 libraries of the machine's Python site-packages (nvidia/*/lib), and runs
#   1. parity: loss and every LoRA A/B gradient of one fixed batch, CPU vs CUDA, fp32 (≤ 1e-4 relative per tensor);
#   2. speed: ours (the published Gpu CLI, `gradients --steps`) vs PyTorch + PEFT (tools/gpu/peft_peer.py) on the same
#      GPU, model shape, batch and LoRA config, fp32 and bf16: tokens/s and peak GPU memory;
# and writes the table to $OUT/h200.md (plus the JSON of every run).
#
# On the GPU machine (after carrying the parts, see prepare.sh):  tools/gpu/run-h200.sh
# Here, without a GPU or torch:  tools/gpu/run-h200.sh --dry-run
#   the same steps on the stories260K model (converted here, no torch): the bundle is joined, verified and unpacked, the
#   published CLI injects, parity runs CPU EP (default threads) vs CPU EP (1 thread), ours is timed on the CPU EP; the
#   PyTorch + PEFT runs and the CUDA library lookup are skipped (reported as such in the table).
# Knobs (environment): SHAPE=qwen0.5b|llama1b  BATCH=4 SEQ=512 RANK=16 ALPHA=32 STEPS=20 WARMUP=3 DTYPES="fp32 bf16"
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mode=gpu
if [ "${1:-}" = "--dry-run" ]; then mode=dry; fi
out="${OUT:-$root/.tmp/h200-out}"
work="${WORK:-/tmp/onnx-lora-h200}"
shape="${SHAPE:-qwen0.5b}" batch="${BATCH:-4}" seq="${SEQ:-512}" rank="${RANK:-16}" alpha="${ALPHA:-32}"
steps="${STEPS:-20}" warmup="${WARMUP:-3}" dtypes="${DTYPES:-fp32 bf16}"
if [ "$mode" = dry ]; then shape=stories260K batch="${BATCH:-2}" seq="${SEQ:-64}" steps="${STEPS:-3}" warmup="${WARMUP:-1}" dtypes=fp32; fi
# $OUT comes back from the GPU machine only up to 8 files: runs write under $res; $OUT gets log.txt, h200.md, runs.json.
res="$work/results"
rm -rf "$res"
mkdir -p "$out" "$work" "$res"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/log.txt" >&2; }
dump() { python3 -c 'import json,os,sys; d=sys.argv[1]; json.dump({f: open(os.path.join(d, f), errors="replace").read()[-20000:] for f in sorted(os.listdir(d))}, open(sys.argv[2], "w"), indent=1)' "$res" "$out/runs.json"; }
fail() { log "FAILED: $*"; dump; exit 1; }
log "mode $mode, shape $shape, batch $batch x $seq, LoRA r=$rank alpha=$alpha all-linear, $steps timed steps after $warmup"

# 1. The bundle: parts carried by earlier calls (receive.sh) or by this one, joined and checked against the manifest.
mkdir -p "$work/parts"
for d in "$root"/.gpu-bundle/p??; do [ -d "$d" ] && cp "$d"/part-* "$d"/MANIFEST "$work/parts/"; done
[ -f "$work/parts/MANIFEST" ] || fail "no bundle part here: run tools/gpu/prepare.sh, then carry .gpu-bundle/p00, p01, ... (one per call)"
want=$(sed -n 's/^parts //p' "$work/parts/MANIFEST") sha=$(sed -n 's/^sha256 //p' "$work/parts/MANIFEST")
have=$(ls "$work/parts" | grep -c '^part-')
[ "$have" = "$want" ] || fail "holding $have of $want parts: missing $(for i in $(seq -f %02g 0 $((want - 1))); do [ -f "$work/parts/part-$i" ] || printf 'p%s ' "$i"; done)"
cat "$work"/parts/part-* > "$work/bundle.tar.zst"
[ "$(sha256sum "$work/bundle.tar.zst" | cut -d' ' -f1)" = "$sha" ] || fail "the joined bundle's sha256 differs from the manifest's"
rm -rf "$work/publish"
if command -v zstd >/dev/null; then zstd -q -d -c "$work/bundle.tar.zst" | tar -C "$work" -xf -
else python3 -c "import sys,zstandard; zstandard.ZstdDecompressor().copy_stream(open(sys.argv[1],'rb'), sys.stdout.buffer)" "$work/bundle.tar.zst" | tar -C "$work" -xf -; fi
rm -f "$work/bundle.tar.zst"
cli="$work/publish/onnx-lora"
[ -x "$cli" ] || fail "the bundle holds no publish/onnx-lora"
log "bundle joined ($want parts, sha256 ok): $(du -sh "$work/publish" | cut -f1)"

# 2. The CUDA 13 libraries: pip's nvidia-* wheels in the Python site-packages (cublas, cudnn, cuda_runtime, curand...).
site=$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
cuda_libs=$(ls -d "$site"/nvidia/*/lib 2>/dev/null | paste -sd: -)
if [ -n "$cuda_libs" ]; then export LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
log "CUDA libraries from $site/nvidia/*/lib: ${cuda_libs:-none found}"
ep=cuda
if [ "$mode" = dry ]; then ep=cpu; else nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/log.txt" >&2; fi

# Peak GPU memory of a process: nvidia-smi's per-process figure (what the CUDA context, the framework's pool and
# everything else of that process hold), sampled every 0.2 s; the same measure for ours and for PEFT.
run_sampled() {  # NAME COMMAND... → $res/NAME.json (stdout), $res/NAME.err, $res/NAME.mem (peak MiB)
  local name=$1; shift
  "$@" > "$res/$name.json" 2> "$res/$name.err" &
  local pid=$! peak=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$mode" = gpu ]; then
      local used
      used=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', *' -v p="$pid" '$1 == p { print $2 }')
      if [ -n "$used" ] && [ "$used" -gt "$peak" ]; then peak=$used; fi
    fi
    sleep 0.2
  done
  wait "$pid"; local rc=$?
  echo "$peak" > "$res/$name.mem"
  [ "$rc" = 0 ] || log "$name exited $rc: $(tail -n 3 "$res/$name.err" | tr '\n' ' ')"
  return "$rc"
}

# 3. Models: random weights of the shape, exported by torch.onnx (dry run: stories260K, converted by our CLI).
for dtype in $dtypes; do
  mkdir -p "$work/$dtype"
  if [ "$mode" = dry ]; then
    "$cli" convert-llama2c "$root/models/default/stories260K/stories260K.bin" -o "$work/$dtype/model.onnx" --no-kv-cache > /dev/null || fail "convert"
    echo '{"vocab_size": 512}' > "$work/$dtype/shape.json"
  else
    python3 "$root/tools/gpu/peft_peer.py" export --shape "$shape" --dtype "$dtype" --out "$work/$dtype" > "$res/export-$dtype.json" 2>> "$out/log.txt" || fail "export $dtype"
  fi
  "$cli" inject "$work/$dtype/model.onnx" -o "$work/$dtype/lora.onnx" --targets all-linear -r "$rank" --alpha "$alpha" > "$res/inject-$dtype.txt" || fail "inject $dtype"
  log "model $dtype: $(cat "$work/$dtype/shape.json"); $(grep -m1 'trainable params' "$res/inject-$dtype.txt" || tail -n 1 "$res/inject-$dtype.txt")"
done
vocab=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$work/fp32/shape.json")

# 4. Parity, fp32: CPU EP vs CUDA EP (dry run: CPU default threads vs CPU 1 thread), one fixed batch, B ≠ 0.
fixed=(--vocab-size "$vocab" --batch-size 2 --seq-length "$([ "$mode" = dry ] && echo 32 || echo 128)" --seed 7 --artifacts "$work/fp32/artifacts")
"$cli" gradients "$work/fp32/lora.onnx" "${fixed[@]}" --execution-provider cpu -o "$work/grads-cpu.safetensors" > "$res/parity-cpu.json" || fail "CPU gradients"
other=(--execution-provider "$ep"); [ "$mode" = dry ] && other=(--execution-provider cpu --threads 1)
"$cli" gradients "$work/fp32/lora.onnx" "${fixed[@]}" "${other[@]}" -o "$work/grads-$ep.safetensors" > "$res/parity-$ep.json" || fail "$ep gradients"
python3 "$root/tools/gpu/compare_gradients.py" "$work/grads-cpu.safetensors" "$work/grads-$ep.safetensors" --rtol 1e-4 --json "$res/parity.json" > /dev/null
parity_rc=$?
log "parity cpu vs $ep: $(cat "$res/parity.json")"

# 5. Speed and memory: ours vs PyTorch + PEFT, same shape, batch, LoRA config and step (fwd, bwd, clip 1.0, AdamW).
for dtype in $dtypes; do
  run_sampled "ours-$dtype" "$cli" gradients "$work/$dtype/lora.onnx" --vocab-size "$vocab" --batch-size "$batch" --seq-length "$seq" \
    --steps "$steps" --warmup "$warmup" --lora-b-std 0 --execution-provider "$ep" --artifacts "$work/$dtype/artifacts"
  if [ "$mode" = dry ]; then
    echo '{"skipped": "no torch on the dry-run machine"}' > "$res/peft-$dtype.json"; echo 0 > "$res/peft-$dtype.mem"
  else
    run_sampled "peft-$dtype" python3 "$root/tools/gpu/peft_peer.py" train --shape "$shape" --dtype "$dtype" --batch-size "$batch" \
      --seq-length "$seq" --rank "$rank" --alpha "$alpha" --steps "$steps" --warmup "$warmup"
  fi
  log "ours $dtype: $(cat "$res/ours-$dtype.json") peak $(cat "$res/ours-$dtype.mem") MiB; peft $dtype: $(cat "$res/peft-$dtype.json") peak $(cat "$res/peft-$dtype.mem") MiB"
done

# 6. The table.
python3 - "$res" "$mode" "$shape" "$batch" "$seq" "$rank" "$alpha" "$steps" "$dtypes" <<'PY' | tee "$out/h200.md"
import json, os, sys
out, mode, shape, batch, seq, rank, alpha, steps, dtypes = sys.argv[1:]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            text = f.read().strip()
    except OSError:
        return {}
    for candidate in (text, text.splitlines()[-1] if text else ""):  # one JSON document, or JSON as the last line
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    return {}
def mem(name):
    try:
        return int(open(os.path.join(out, name)).read().strip() or 0)
    except (OSError, ValueError):
        return 0
p = load("parity.json")
print(f"## {'DRY RUN (CPU EP vs CPU EP, stories260K; not GPU figures)' if mode == 'dry' else 'H200'}: {shape}, batch {batch} x {seq}, LoRA r={rank} alpha={alpha} all-linear, median of {steps} steps")
print()
print(f"Parity (fp32, fixed batch, CPU vs {'CPU 1 thread' if mode == 'dry' else 'CUDA'}): loss rel {p.get('loss_rel')}, "
      f"max gradient rel {p.get('max_grad_rel')} over {p.get('tensors')} tensors (A {p.get('lora_A_max_rel')}, B {p.get('lora_B_max_rel')}), "
      f"≤ 1e-4: {'PASS' if p.get('ok') else 'FAIL'}")
print()
print("| dtype | ours tokens/s | PEFT tokens/s | ours / PEFT | ours peak GPU MiB | PEFT peak GPU MiB | ours / PEFT | PEFT max_memory_allocated MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for d in dtypes.split():
    o, q = load(f"ours-{d}.json"), load(f"peft-{d}.json")
    om, qm = mem(f"ours-{d}.mem"), mem(f"peft-{d}.mem")
    ot, qt = o.get("tokens_per_s"), q.get("tokens_per_s")
    speed = f"{ot / qt:.2f}x" if ot and qt else "-"
    memr = f"{om / qm:.2f}x" if om and qm else "-"
    print(f"| {d} | {ot or o.get('error', '-')} | {qt or q.get('skipped', '-')} | {speed} | {om or '-'} | {qm or '-'} | {memr} | {q.get('max_memory_allocated_mib', '-')} |")
PY
dump
log "table written to $out/h200.md (every run's output in $out/runs.json)"
exit "$parity_rc"
