#!/usr/bin/env bash
# Parity of our ONNX LoRA training with libtorch (TorchSharp), issue 7. NOT part of CI's solution run: it restores
# libtorch-cpu-linux-x64 (128 MB download, 600 MB unpacked). Usage: tools/torch-parity.sh [extra dotnet test args]
# Runs tests/Onnx.Lora.TorchRef.Tests (category "Parity") and ends with the line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
dotnet test --project tests/Onnx.Lora.TorchRef.Tests/Onnx.Lora.TorchRef.Tests.csproj -c Release \
  --filter "TestCategory=Parity" --report-trx --results-directory "$results" "$@"
rc=$?
counters=$(grep -ho '<Counters [^>]*>' "$results"/*.trx 2>/dev/null | head -n 1)
p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
f=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
failed=${f:-0}
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "${p:-0} passed, $failed failed"
exit "$rc"
