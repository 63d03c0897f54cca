#!/usr/bin/env bash
# Crash-safety campaign: SIGKILL `onnx-lora train` at seeded random moments (start-up, training, mid-checkpoint),
# resume with --resume latest, and compare the final metrics and adapter bytes with an uninterrupted run.
#   tools/kill-resume.sh [--trials 10] [--seed 20240611] [--steps 300] [--save-steps 5] [--dir out/bench/kill-resume]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build "$root/tools/Onnx.Lora.Cli/Onnx.Lora.Cli.csproj" -c Release -v quiet -nologo >&2
dotnet build "$root/tools/Onnx.Lora.Bench/Onnx.Lora.Bench.csproj" -c Release -v quiet -nologo >&2
exec dotnet "$root/tools/Onnx.Lora.Bench/bin/Release/net10.0/onnx-lora-bench.dll" kill-resume \
  --cli "$root/tools/Onnx.Lora.Cli/bin/Release/net10.0/onnx-lora.dll" "$@"
