#!/usr/bin/env bash
# Speed and memory of LoRA training: our ONNX trainer vs libtorch (TorchSharp), issue 7. Each peer runs in its own
# child process (peak RSS = its VmHWM); the sgemm probe (one large MatMul through ORT) runs in the same session.
# Usage: tools/torch-bench.sh [--model M.onnx] [--steps 30 --warmup 3 --batch 4 --seq 64 --threads 2 --rank 8 --runs 3 --sdpa]
set -euo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
dotnet build tools/Onnx.Lora.TorchRef/Onnx.Lora.TorchRef.csproj -c Release -v quiet -nologo >/dev/null
exec tools/Onnx.Lora.TorchRef/bin/Release/net10.0/onnx-lora-torchref bench "$@"
