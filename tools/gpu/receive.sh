#!/usr/bin/env bash
# On the GPU machine: keeps the bundle part(s) carried by this call (.gpu-bundle/pNN, made by tools/gpu/prepare.sh)
# in the work folder, so that a later call's tools/gpu/run-h200.sh can join them. Prints what it holds so far.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
parts="${WORK:-/tmp/onnx-lora-h200}/parts"
mkdir -p "$parts"
for d in "$root"/.gpu-bundle/p??; do
  [ -d "$d" ] || continue
  cp "$d"/part-* "$d"/MANIFEST "$parts"/
done
echo "holding $(ls "$parts" | grep -c '^part-') of $(sed -n 's/^parts //p' "$parts/MANIFEST" 2>/dev/null || echo '?') parts in $parts"
