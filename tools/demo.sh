#!/usr/bin/env bash
# The main job on the embedded default model (stories260K, a real pretrained TinyStories Llama).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cli="$root/tools/onnx-lora"
out="${1:-$root/out/demo}"
mkdir -p "$out"
"$cli" --help
