#!/usr/bin/env bash
# Runs every test of the solution and ends with the line "N passed, N failed" (counted from the TRX reports).
set -uo pipefail
cd "$(dirname "$0")/.."
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
"$(dirname "$0")/test-deps.sh"
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
# The Gpu flavour of the CLI (ORT with the CUDA / TensorRT providers, built into bin/gpu) is built too: its tests
# (tests/Onnx.Lora.Tests/Gpu) run it on this GPU-less machine and check its failure path. Its restore fetches the
# ~290 MB CUDA provider once per NuGet cache.
gpu_start=$SECONDS
dotnet build tools/Onnx.Lora.Cli/Onnx.Lora.Cli.csproj -c Release -p:OrtFlavour=Gpu -v quiet -nologo >&2
gpu_rc=$?
echo "Gpu flavour build: exit $gpu_rc in $((SECONDS - gpu_start)) s" >&2
dotnet test --solution Onnx.Lora.sln -c Release --report-trx --results-directory "$results" "$@"
rc=$?
if [ "$gpu_rc" != 0 ] && [ "$rc" = 0 ]; then rc=$gpu_rc; fi
passed=0; failed=0; found=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  found=1
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
  f=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  e=$(sed -n 's/.* error="\([0-9]*\)".*/\1/p' <<<"$counters")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0} + ${e:-0}))
done
if [ "$found" = 0 ]; then
  echo "no test report was written (build failed?)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$rc"
