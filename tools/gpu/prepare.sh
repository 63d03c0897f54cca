#!/usr/bin/env bash
# Prepares what the GPU machine needs to run tools/gpu/run-h200.sh. That machine has no .NET and no network, and one
# call to it carries at most 64 MiB (working tree included), so this makes, under the git-ignored .gpu-bundle/:
#   publish/          a self-contained linux-x64 publish of the Gpu flavour of the CLI (.NET runtime, ORT with the
#                     CUDA and TensorRT providers: libonnxruntime_providers_cuda.so alone is ~290 MB)
#   pNN/part-NN       that folder as tar | zstd, split into parts of PART_MIB (default 58) MiB, one folder per part
#   pNN/MANIFEST      in every part folder: the parts' count and the sha256 of the whole archive
# Then carry one part folder per `run` call (carry: [".gpu-bundle/p00"], then p01, ...), each call within the
# machine's warm window of the previous one; the last call runs tools/gpu/run-h200.sh, which joins the parts there.
# Usage: tools/gpu/prepare.sh [--keep-publish]      (PART_MIB=N to change the part size)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bundle="$root/.gpu-bundle"
part_mib="${PART_MIB:-58}"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
command -v zstd >/dev/null || { echo "prepare.sh: zstd is needed (apt-get install -y zstd)" >&2; exit 2; }

# The whole working tree travels with every call: a part plus the tree must stay under the 64 MiB limit.
tree_kib=$(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 du -ck 2>/dev/null | tail -n 1 | cut -f1)
if [ $(( tree_kib + part_mib * 1024 )) -ge $(( 63 * 1024 + 512 )) ]; then
  echo "prepare.sh: the working tree (${tree_kib} KiB) plus a ${part_mib} MiB part would exceed a call's 64 MiB; set PART_MIB lower" >&2
  exit 2
fi

rm -rf "$bundle"
mkdir -p "$bundle"
start=$SECONDS
dotnet publish "$root/tools/Onnx.Lora.Cli/Onnx.Lora.Cli.csproj" -c Release -r linux-x64 --self-contained true \
  -p:OrtFlavour=Gpu -p:DebugType=none -o "$bundle/publish" -v quiet -nologo
echo "published $(du -sh "$bundle/publish" | cut -f1) in $((SECONDS - start)) s" >&2

start=$SECONDS
tar -C "$bundle" -cf - publish | zstd -q -T0 -"${ZSTD_LEVEL:-12}" -o "$bundle/onnx-lora-gpu.tar.zst"
sha=$(sha256sum "$bundle/onnx-lora-gpu.tar.zst" | cut -d' ' -f1)
split -b "${part_mib}M" -d -a 2 "$bundle/onnx-lora-gpu.tar.zst" "$bundle/part-"
parts=("$bundle"/part-*)
for p in "${parts[@]}"; do
  n="${p##*-}"
  mkdir "$bundle/p$n"
  mv "$p" "$bundle/p$n/"
  printf 'parts %s\nsha256 %s\n' "${#parts[@]}" "$sha" > "$bundle/p$n/MANIFEST"
done
echo "archive $(du -h "$bundle/onnx-lora-gpu.tar.zst" | cut -f1) (zstd -${ZSTD_LEVEL:-12}, $((SECONDS - start)) s) in ${#parts[@]} parts of ≤ ${part_mib} MiB: $(cd "$bundle" && ls -d p?? | tr '\n' ' ')" >&2
rm "$bundle/onnx-lora-gpu.tar.zst"
if [ "${1:-}" != "--keep-publish" ]; then rm -rf "$bundle/publish"; fi
